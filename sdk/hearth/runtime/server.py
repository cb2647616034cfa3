"""Server bootstrap: every Hearth service runs inside a :class:`ServiceHost`.

The host owns the parts every service has: logging, tracing, metrics, the
NATS bus, and the grpc.aio server with health, reflection and the error,
tracing and metrics interceptors. Shutdown follows one order: leave discovery
(health NOT_SERVING, on_leave hooks), grace period while the server drains
running RPCs, cleanup hooks (newest first), then the bus and exporters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hearth.runtime.bus import NatsBus
from hearth.runtime.interceptors import RpcInterceptor
from hearth.runtime.logs import setup_logging
from hearth.runtime.metrics import ServiceMetrics
from hearth.runtime.settings import ServiceSettings
from hearth.runtime.tracing import Telemetry

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class ServiceHost:
    """Runtime of one service process.

    Lifecycle: ``await start()`` (connects the bus, binds the server, starts
    serving), ``await wait()`` until SIGINT/SIGTERM or ``request_stop()``,
    ``await stop()``. stop() is safe to call twice and after a failed start.
    """

    def __init__(self, name: str, settings: ServiceSettings, *, connect_bus: bool = True) -> None:
        self.name = name
        self.settings = settings
        setup_logging(name, settings.log_level, settings.log_format)
        self.telemetry = Telemetry(
            name, settings.data_dir, to_files=settings.trace_to_files, otlp_endpoint=settings.otlp_endpoint
        )
        self.metrics = ServiceMetrics(name.removesuffix("d").replace("-", "_"))
        self.bus: NatsBus | None = NatsBus(settings.nats_url, name, self.telemetry) if connect_bus else None
        self.server = grpc.aio.server(
            interceptors=[RpcInterceptor(self.telemetry.tracer, self.metrics)],
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        self._cleanup: list[Hook] = []
        self._leave: list[Hook] = []
        self._stop_event = asyncio.Event()
        self._stopped = False
        self.port = 0
        self.address = ""

    def add_service(
        self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str
    ) -> None:
        """Register a servicer, e.g.
        ``add_service(add_FooServicer_to_server, foo, "hearth.api.foo.v1.FooService")``."""
        register(servicer, self.server)
        self._service_names.append(full_name)

    def on_cleanup(self, hook: Hook) -> None:
        """Run hook at stop, after the server has drained; newest first."""
        self._cleanup.append(hook)

    def on_leave(self, hook: Hook) -> None:
        """Run hook first at stop, before draining (leave discovery)."""
        self._leave.append(hook)

    async def start(self) -> None:
        if self.bus is not None:
            await self.bus.connect()
        reflection.enable_server_reflection(self._service_names, self.server)
        self.port = self.server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise SystemExit(f"{self.name}: cannot bind {self.settings.listen}")
        host = self.settings.listen.rpartition(":")[0] or "127.0.0.1"
        self.address = (
            self.settings.advertise_address
            or f"{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{self.port}"
        )
        if self.settings.metrics_listen:
            self.metrics.serve(self.settings.metrics_listen)
        await self.server.start()
        for name in self._service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on %s", self.name, self.address, extra={"address": self.address})

    def request_stop(self) -> None:
        self._stop_event.set()

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop_event.set)
        await self._stop_event.wait()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("%s stopping", self.name)
        await self.health.enter_graceful_shutdown()
        await _run_hooks(self._leave, "leave")
        await self.server.stop(self.settings.shutdown_grace_seconds)
        await _run_hooks(reversed(self._cleanup), "cleanup")
        if self.bus is not None:
            await self.bus.close()
        self.metrics.stop()
        self.telemetry.shutdown()
        log.info("%s stopped", self.name)


async def _run_hooks(hooks: Iterable[Hook], stage: str) -> None:
    for hook in list(hooks):
        try:
            await hook()
        except Exception:
            log.exception("%s hook %r failed", stage, hook)


async def serve(host: ServiceHost, started: Callable[[], Awaitable[None]] | None = None) -> None:
    """Start the host, run ``started`` (e.g. start background loops), wait for a
    signal, stop. Stop runs even when start fails."""
    try:
        await host.start()
        if started is not None:
            await started()
        await host.wait()
    finally:
        await host.stop()
