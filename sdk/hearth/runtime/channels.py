"""Client channels between services, traced."""

from __future__ import annotations

import grpc

from hearth.runtime.tracing import Telemetry

_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def open_channel(address: str, telemetry: Telemetry | None = None) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to another Hearth service, with client
    tracing so the callee's spans join the caller's trace."""
    interceptors = telemetry.client_interceptors() if telemetry else None
    return grpc.aio.insecure_channel(address, options=_OPTIONS, interceptors=interceptors)  # type: ignore[arg-type]
