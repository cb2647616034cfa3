"""Heartbeats: the worker announces itself on NATS at a fixed interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hearth.api.events.v1 import events_pb2
from hearth.api.worker.v1 import worker_pb2
from hearth.errors import HearthError
from hearth.runtime import NatsBus, subjects

log = logging.getLogger(__name__)


class Heartbeater:
    """Publishes ``WorkerHeartbeat`` on ``hearth.workers.heartbeat.<worker_id>``.

    start() publishes the first heartbeat at once (call it when the server is
    ready) and then one every ``interval_seconds`` from a task it owns;
    beat() publishes one now (the worker calls it on leave and on Drain,
    after turning DRAINING, so the pool stops placing at once rather than at
    the next tick); beat_soon() asks the loop for one now without waiting
    (when a model's state changes). Heartbeats keep going while the worker drains, so the pool does not
    take a worker that is finishing its generations for a lost one; stop()
    ends them and is safe to call twice. Heartbeats are not traced: they
    belong to no job. A NATS outage is logged once, not per beat.

    Args:
        bus: the service's NATS bus.
        worker_id: the id in the subject.
        describe: the WorkerInfo to announce, read at every beat.
        interval_seconds: seconds between heartbeats.
    """

    def __init__(
        self,
        bus: NatsBus,
        worker_id: str,
        describe: Callable[[], worker_pb2.WorkerInfo],
        interval_seconds: float,
    ) -> None:
        self._bus = bus
        self._subject = subjects.worker_heartbeat(worker_id)
        self._describe = describe
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._wake = asyncio.Event()

    async def start(self) -> None:
        if self._task is not None:
            return
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="workerd-heartbeat")

    async def beat(self) -> None:
        message = events_pb2.WorkerHeartbeat(worker=self._describe(), interval_seconds=self._interval)
        try:
            await self._bus.publish(self._subject, message, traced=False)
        except HearthError as err:
            if not self._failing:
                log.warning("heartbeat not published: %s", err)
            self._failing = True
            return
        if self._failing:
            log.info("heartbeats published again")
            self._failing = False

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def beat_soon(self) -> None:
        """Have the loop publish a heartbeat now rather than at the next tick
        (several requests before it runs make one heartbeat)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.beat()
