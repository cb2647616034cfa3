"""The NATS bus: protobuf messages with trace context in headers.

Publishers inject the current span's context into the message headers;
subscribers start a CONSUMER span that is its child, so a NATS hop shows in the
job's trace like a gRPC call does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import StreamConfig
from opentelemetry import propagate, trace

from hearth.errors import Unavailable
from hearth.runtime import subjects
from hearth.runtime.tracing import Telemetry

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Handler = Callable[[M], Awaitable[None]]


class NatsBus:
    """One NATS connection of a service. ``connect()`` and ``close()`` are
    each safe to call twice."""

    def __init__(self, url: str, name: str, telemetry: Telemetry | None = None) -> None:
        self.url = url
        self.name = name
        self._telemetry = telemetry
        self._tracer = telemetry.tracer if telemetry else trace.get_tracer("hearth.bus")
        self._nc: Client | None = None
        self._stream_ready = False

    @property
    def client(self) -> Client:
        if self._nc is None:
            raise RuntimeError("NatsBus is not connected")
        return self._nc

    async def connect(self, timeout: float = 10.0) -> None:
        if self._nc is not None:
            return
        try:
            self._nc = await nats.connect(
                self.url,
                name=self.name,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
            )
        except Exception as err:  # nats raises several unrelated types here
            raise SystemExit(f"{self.name}: cannot connect to NATS at {self.url}: {err}") from None

    async def _on_error(self, err: Exception) -> None:
        log.warning("nats error: %s", err)

    async def _on_disconnect(self) -> None:
        log.warning("nats disconnected")

    async def publish(self, subject: str, message: Message, *, traced: bool = True) -> None:
        """Publish core NATS (at most once): heartbeats, cancellations."""
        headers: dict[str, str] = {}
        if traced:
            propagate.inject(headers)
        try:
            await self.client.publish(subject, message.SerializeToString(), headers=headers or None)
        except Exception as err:
            raise Unavailable(f"NATS publish failed: {err}", reason="BUS_UNAVAILABLE") from err

    async def publish_event(self, subject: str, message: Message, *, wait_ack: bool = True) -> None:
        """Publish to the events JetStream stream (kept, replayable).

        With ``wait_ack`` the call returns once the stream has stored the
        message. Without it the message is sent as a plain publish, which the
        stream stores all the same but nobody waits for: the right choice for
        copies of facts whose truth lives elsewhere (job events, whose record
        is PostgreSQL), as it saves a round trip per event."""
        await self._ensure_stream()
        with self._tracer.start_as_current_span(f"publish {subject}", kind=trace.SpanKind.PRODUCER):
            headers: dict[str, str] = {}
            propagate.inject(headers)
            data = message.SerializeToString()
            if wait_ack:
                await self.client.jetstream().publish(subject, data, headers=headers)
            else:
                await self.client.publish(subject, data, headers=headers)

    async def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        js = self.client.jetstream()
        config = StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=list(subjects.EVENTS_STREAM_SUBJECTS),
            max_age=7 * 24 * 3600.0,
            max_msgs=1_000_000,
        )
        try:
            await js.add_stream(config)
        except Exception:
            await js.stream_info(subjects.EVENTS_STREAM)
        self._stream_ready = True

    async def subscribe(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        traced: bool = True,
        queue: str = "",
    ) -> Subscription:
        """Call handler with each decoded message. A traced subscription runs
        the handler inside a CONSUMER span parented by the publisher's context."""

        async def on_message(msg: Msg) -> None:
            try:
                decoded = message_type.FromString(msg.data)
            except Exception:
                log.warning("undecodable message on %s", msg.subject)
                return
            try:
                if traced:
                    parent = propagate.extract(msg.headers or {})
                    with self._tracer.start_as_current_span(
                        f"receive {msg.subject}", context=parent, kind=trace.SpanKind.CONSUMER
                    ):
                        await handler(decoded)
                else:
                    await handler(decoded)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler for %s failed", msg.subject)

        return await self.client.subscribe(subject, queue=queue, cb=on_message)

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except Exception:
                await nc.close()
