"""Copies of job lifecycle events on NATS, published in the background.

The database is the truth; NATS carries copies. Publishing never blocks a
job and never fails one: events wait in a bounded buffer that one task
drains in order, and a NATS failure is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from opentelemetry import context as otel_context

from hearth.api.events.v1 import events_pb2
from hearth.runtime import NatsBus, subjects
from orchestratord.api.convert import event_to_proto
from orchestratord.domain.jobs import JobEvent

log = logging.getLogger(__name__)


class NatsEventPublisher:
    """:class:`orchestratord.domain.ports.EventPublisher` over the NATS bus.

    Lifecycle events go to JetStream (``subjects.job_event(kind)``, kept and
    replayable); cancellations are broadcast on core NATS
    (``subjects.JOB_CANCEL``). start()/stop() are safe to call twice; stop()
    publishes what is buffered first, for at most ``drain_seconds``.

    Args:
        trace_context_of: the trace context of a job, so that its events'
            publish spans (and the trace headers) join the job's trace even
            though they are sent later from a background task.
    """

    def __init__(
        self,
        bus: NatsBus,
        *,
        trace_context_of: Callable[[str], Any] | None = None,
        max_buffered: int = 100_000,
        drain_seconds: float = 2.0,
        linger_seconds: float = 0.02,
    ) -> None:
        self._bus = bus
        self._linger = linger_seconds
        self._trace_context_of = trace_context_of
        self._buffer: deque[tuple[str, Message, bool, Any]] = deque()
        self._max_buffered = max_buffered
        self._drain_seconds = drain_seconds
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    def job_event(self, event: JobEvent) -> None:
        self._put(subjects.job_event(event.kind), event_to_proto(event), True, event.job_id)

    def cancel_requested(self, job_id: str, reason: str) -> None:
        self._put(
            subjects.JOB_CANCEL, events_pb2.CancelRequested(job_id=job_id, reason=reason), False, job_id
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._publish_buffered(), name="nats-events")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._drain_seconds):
                await self._idle.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._buffer:
            log.warning("%d job events not published on NATS at stop", len(self._buffer))

    def _put(self, subject: str, message: Message, kept: bool, job_id: str) -> None:
        if len(self._buffer) >= self._max_buffered:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                log.warning("NATS event buffer full; %d events dropped so far", self._dropped)
            return
        context = self._trace_context_of(job_id) if self._trace_context_of is not None else None
        self._buffer.append((subject, message, kept, context or otel_context.get_current()))
        self._idle.clear()
        self._ready.set()

    async def _publish_buffered(self) -> None:
        while True:
            await self._ready.wait()
            # Copies can wait a moment: publishing right away would compete
            # with the job being dispatched for the one event loop.
            await asyncio.sleep(self._linger)
            self._ready.clear()
            while self._buffer:
                subject, message, kept, context = self._buffer.popleft()
                token = otel_context.attach(context)
                try:
                    if kept:
                        # The database holds the record; these are copies, so
                        # no round trip per event waiting for the stream's ack.
                        await self._bus.publish_event(subject, message, wait_ack=False)
                    else:
                        await self._bus.publish(subject, message)
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    log.warning("publishing %s on NATS failed: %s", subject, err)
                finally:
                    otel_context.detach(token)
            self._idle.set()
