"""Copies of the work event log on NATS JetStream.

PostgreSQL holds the log (the task store writes each event in the
transaction of its change); this relay copies it, in sequence order, to
``hearth.events.work.<kind>`` on the HEARTH_EVENTS stream. It reads the log
itself rather than taking events from memory, so a copy is never out of
order and none is skipped while the relay runs: the store's
``on_committed`` only wakes it. At start it continues after the last work
event the stream holds (written by an earlier process), so events committed
just before a restart are copied too; when that cannot be read it starts at
the log's end and says so.

Publishing never blocks or fails a write: a NATS failure is logged and the
same events are tried again at the next wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from nats.js.errors import NotFoundError

from hearth.api.tasks.v1 import tasks_pb2
from hearth.runtime import NatsBus, subjects
from orchestratord.api.work_convert import work_event_to_proto
from orchestratord.domain.events import WorkEvent

log = logging.getLogger(__name__)


class EventLog(Protocol):
    async def read_events(
        self, *, since: int = 0, limit: int = 1000, project_id: str = ""
    ) -> list[WorkEvent]: ...

    async def last_sequence(self) -> int: ...


class WorkEventRelay:
    """Copies the work event log to JetStream. start()/stop() are safe to call twice.

    Args:
        log_store: the event log (the task store).
        bus: the service's NATS connection.
        batch: events read from the log per round.
        linger_seconds: how long a wake-up waits for more commits to copy together.
    """

    def __init__(
        self, log_store: EventLog, bus: NatsBus, *, batch: int = 500, linger_seconds: float = 0.02
    ) -> None:
        self._log = log_store
        self._bus = bus
        self._batch = batch
        self._linger = linger_seconds
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def committed(self, events: Sequence[WorkEvent]) -> None:
        """The store's on_committed: new events are in the log."""
        if events:
            self._idle.clear()
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._wake.set()  # copy what an earlier process left
            self._task = asyncio.create_task(self._run(), name="work-event-relay")

    async def stop(self, drain_seconds: float = 2.0) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_seconds):
                await self._idle.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _start_after(self) -> int:
        """The sequence of the last work event the stream holds; 0 when it
        holds none (the whole log is copied); the log's end when the stream
        cannot be asked."""
        try:
            last = await self._bus.client.jetstream().get_last_msg(
                subjects.EVENTS_STREAM, subjects.WORK_EVENT_ALL
            )
        except asyncio.CancelledError:
            raise
        except NotFoundError:
            return 0
        except Exception as err:  # an old server without wildcard lookups, or NATS away
            sequence = await self._log.last_sequence()
            log.warning(
                "work events: cannot read the last copy on NATS (%s); copying from %d on", err, sequence + 1
            )
            return sequence
        return int(tasks_pb2.WorkEvent.FromString(last.data or b"").sequence)

    async def _run(self) -> None:
        after: int | None = None
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._linger)
            self._wake.clear()
            try:
                if after is None:
                    after = await self._start_after()
                while True:
                    events = await self._log.read_events(since=after, limit=self._batch)
                    if not events:
                        break
                    for event in events:
                        await self._bus.publish_event(
                            subjects.work_event(event.kind), work_event_to_proto(event), wait_ack=False
                        )
                        after = event.sequence
                        self.published += 1
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("copying work events to NATS failed (retried at the next change): %s", err)
                continue
            if not self._wake.is_set():
                self._idle.set()
