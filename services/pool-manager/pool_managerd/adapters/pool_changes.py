"""Pool changes go out on NATS as events_pb2.PoolChanged."""

from __future__ import annotations

import logging

from hearth.api.events.v1 import events_pb2
from hearth.errors import Unavailable
from hearth.runtime import NatsBus, subjects
from pool_managerd.domain.pool import ChangeKind, PoolChange

log = logging.getLogger(__name__)

_WIRE_CHANGE = {
    ChangeKind.JOINED: events_pb2.PoolChanged.CHANGE_JOINED,
    ChangeKind.DRAINING: events_pb2.PoolChanged.CHANGE_DRAINING,
    ChangeKind.LEFT: events_pb2.PoolChanged.CHANGE_LEFT,
}


class PoolChangePublisher:
    """Publishes joined / draining / left on ``subjects.POOL_CHANGED`` (core
    NATS, at most once). UPDATED is not published: every heartbeat is one.
    A failed publish is logged, not raised (see PoolChangeSink)."""

    def __init__(self, bus: NatsBus) -> None:
        self._bus = bus

    async def publish(self, change: PoolChange) -> None:
        wire = _WIRE_CHANGE.get(change.kind)
        if wire is None:
            return
        message = events_pb2.PoolChanged(worker_id=change.worker_id, change=wire)
        try:
            await self._bus.publish(subjects.POOL_CHANGED, message)
        except Unavailable as err:
            log.warning("pool change %s of %s not published: %s", change.kind.value, change.worker_id, err)
