"""workerd's Prometheus metrics, registered on the service's registry."""

from __future__ import annotations

from prometheus_client import Gauge

from hearth.runtime import ServiceMetrics


class WorkerMetrics:
    """The worker's own metrics (labels are bounded: finish_reason only)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.generated_tokens = metrics.counter("generated_tokens_total", "Tokens generated and streamed.")
        self.requests = metrics.counter(
            "requests_total",
            "Generations admitted, by how they ended (stop, length, aborted, error).",
            ["finish_reason"],
        )
        self.running = Gauge(
            f"hearth_{metrics.service}_running_requests",
            "Generations running now.",
            registry=metrics.registry,
        )
        self.time_to_first_token = metrics.histogram(
            "time_to_first_token_seconds",
            "From Generate received to the first token sent.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
