"""Prometheus metrics: a registry per service, /metrics over HTTP, and a
server interceptor counting RPCs by method and code."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class ServiceMetrics:
    """The metric registry of one service. Names follow
    ``hearth_<service>_<what>_<unit>``; labels are bounded (method, code)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            f"hearth_{service}_rpcs_total",
            "RPCs handled, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            f"hearth_{service}_rpc_duration_seconds",
            "Time to handle an RPC (streams: until the end).",
            ["method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 120),
        )
        self._server: Any = None

    def counter(self, what: str, doc: str, labels: list[str] | None = None) -> Counter:
        return Counter(f"hearth_{self.service}_{what}", doc, labels or [], registry=self.registry)

    def histogram(self, what: str, doc: str, labels: list[str] | None = None, **kw: Any) -> Histogram:
        return Histogram(f"hearth_{self.service}_{what}", doc, labels or [], registry=self.registry, **kw)

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port; returns the bound port."""
        host, _, port = listen.rpartition(":")
        self._server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _MetricsInterceptor(self)


class _MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._m = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc."):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        m = self._m

        def record(context: grpc.aio.ServicerContext, started: float) -> None:
            code = context.code() if callable(getattr(context, "code", None)) else None
            name = code.name if isinstance(code, grpc.StatusCode) else "OK"
            m.rpcs.labels(method, name).inc()
            m.rpc_seconds.labels(method).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    return await inner(request, context)
                finally:
                    record(context, started)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    async for item in inner_stream(request, context):
                        yield item
                finally:
                    record(context, started)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
