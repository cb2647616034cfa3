"""Cancellations broadcast on NATS: abort the job here if it runs here."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.subscription import Subscription

from hearth.api.events.v1 import events_pb2
from hearth.runtime import NatsBus, subjects

log = logging.getLogger(__name__)


class CancelListener:
    """Subscribes to ``hearth.jobs.cancel`` (CancelRequested) and aborts the
    job in whichever engine runs it; a job not running here is ignored. The
    generation's stream then ends with finish reason ABORTED. start() and
    stop() are each safe to call twice.

    Args:
        bus: the service's NATS bus.
        abort: aborts a job by id, True when it was running (ModelSet.abort).
    """

    def __init__(self, bus: NatsBus, abort: Callable[[str], Awaitable[bool]]) -> None:
        self._bus = bus
        self._abort = abort
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = await self._bus.subscribe(
                subjects.JOB_CANCEL, events_pb2.CancelRequested, self._on_cancel
            )

    async def _on_cancel(self, message: events_pb2.CancelRequested) -> None:
        if await self._abort(message.job_id):
            log.info(
                "aborted job %s: %s",
                message.job_id,
                message.reason or "cancelled",
                extra={"job_id": message.job_id},
            )

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception as err:  # the connection may already be closed
                log.debug("unsubscribe failed: %s", err)
