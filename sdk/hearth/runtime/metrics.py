"""Prometheus metrics: a registry per service and /metrics over HTTP. RPCs are
counted by the server interceptor (hearth.runtime.interceptors)."""

from __future__ import annotations

from typing import Any

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
