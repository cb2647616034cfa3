"""The orchestrator's Prometheus metrics, on the host's registry."""

from __future__ import annotations

from prometheus_client import Gauge

from hearth.runtime import ServiceMetrics
from orchestratord.domain.queue import BANDS


class OrchestratorMetrics:
    """:class:`orchestratord.domain.ports.JobMetrics` with Prometheus.

    Names follow ``hearth_orchestrator_<what>_<unit>``; labels are bounded
    (priority, state, reason, band), never a job id. ``queue_capacity`` (the
    max_queued setting) is exported as hearth_orchestrator_queue_capacity.
    """

    def __init__(self, metrics: ServiceMetrics, *, queue_capacity: int = 0) -> None:
        self._submitted = metrics.counter(
            "jobs_submitted_total",
            "Jobs accepted by SubmitJob (not deduplicated), by priority.",
            ["priority"],
        )
        self._ended = metrics.counter(
            "jobs_ended_total",
            "Jobs that reached a terminal state, by state and end reason.",
            ["state", "reason"],
        )
        self._queue_depth = Gauge(
            f"hearth_{metrics.service}_queue_depth",
            "Jobs waiting in the queue, by priority band.",
            ["band"],
            registry=metrics.registry,
        )
        self._ttft = metrics.histogram(
            "time_to_first_token_seconds",
            "From submission to the first token relayed.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self._relayed = metrics.counter("relayed_tokens_total", "Tokens relayed from workers to job logs.")
        # The queue's size limit (max_queued), so that "queue nearly full" is a query, not a guess.
        capacity = Gauge(
            f"hearth_{metrics.service}_queue_capacity",
            "Jobs the queue holds across both bands before SubmitJob answers QUEUE_FULL (max_queued).",
            registry=metrics.registry,
        )
        capacity.set(queue_capacity)
        for band in BANDS:
            self._queue_depth.labels(band.value).set(0)

    def job_submitted(self, priority: str) -> None:
        self._submitted.labels(priority).inc()

    def job_ended(self, state: str, reason: str) -> None:
        self._ended.labels(state, reason).inc()

    def queue_depth(self, band: str, depth: int) -> None:
        self._queue_depth.labels(band).set(depth)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def tokens_relayed(self, count: int) -> None:
        self._relayed.inc(count)
