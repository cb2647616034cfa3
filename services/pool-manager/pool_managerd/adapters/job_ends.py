"""Job end events from NATS free the leases a job still holds."""

from __future__ import annotations

import logging

from nats.aio.subscription import Subscription

from hearth.api.events.v1 import events_pb2
from hearth.runtime import NatsBus, subjects
from pool_managerd.domain.pool import PoolView

log = logging.getLogger(__name__)

_TERMINAL = frozenset({"completed", "failed", "cancelled"})


class JobEndListener:
    """Subscribes to the job lifecycle events that orchestratord publishes and
    releases every lease of a job that has ended. Normally the orchestrator has
    released them already and this finds none; after an orchestrator crash or
    restart it is what frees the slots of the jobs it failed.

    start() and stop() are each safe to call twice.
    """

    def __init__(self, bus: NatsBus, pool: PoolView) -> None:
        self._bus = bus
        self._pool = pool
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = await self._bus.subscribe(
                subjects.JOB_EVENT_ALL, events_pb2.JobEvent, self._on_event
            )

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception as err:  # the connection may already be closing
                log.debug("unsubscribe failed: %s", err)

    async def _on_event(self, event: events_pb2.JobEvent) -> None:
        if event.WhichOneof("kind") not in _TERMINAL:
            return
        released = self._pool.release_job(event.job_id)
        if released:
            log.info(
                "released %d lease(s) of ended job %s",
                len(released),
                event.job_id,
                extra={"job_id": event.job_id},
            )
