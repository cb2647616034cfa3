"""workerd's Prometheus metrics, registered on the service's registry."""

from __future__ import annotations

import math

from prometheus_client import Gauge

from hearth.api.worker.v1 import worker_pb2
from hearth.runtime import ServiceMetrics

#: The model states a worker counts its models in (label values of hearth_worker_models).
MODEL_STATES = {
    worker_pb2.MODEL_STATE_UNLOADED: "unloaded",
    worker_pb2.MODEL_STATE_LOADING: "loading",
    worker_pb2.MODEL_STATE_LOADED: "loaded",
    worker_pb2.MODEL_STATE_UNLOADING: "unloading",
    worker_pb2.MODEL_STATE_FAILED: "failed",
}


class WorkerMetrics:
    """The worker's own metrics (labels are bounded: finish_reason and model state only).

    The GPU, engine-load and model-state gauges hold what the worker last
    described of itself (:meth:`observe_info`, called with every heartbeat's
    WorkerInfo), so Prometheus sees the numbers the pool sees.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        service = metrics.service
        self.generated_tokens = metrics.counter("generated_tokens_total", "Tokens generated and streamed.")
        self.requests = metrics.counter(
            "requests_total",
            "Generations admitted, by how they ended (stop, length, aborted, error).",
            ["finish_reason"],
        )
        self.running = Gauge(
            f"hearth_{service}_running_requests",
            "Generations running now.",
            registry=metrics.registry,
        )
        self.time_to_first_token = metrics.histogram(
            "time_to_first_token_seconds",
            "From Generate received to the first token sent.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.decode_rate = metrics.histogram(
            "decode_rate_tokens_per_second",
            "Tokens per second of each generation after its first token (tokens after the first "
            "chunk over the time from the first to the last token).",
            buckets=(1, 2.5, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000),
        )
        self._waiting = Gauge(
            f"hearth_{service}_waiting_requests",
            "Requests the engine has accepted and not yet scheduled (vLLM: its waiting queue).",
            registry=metrics.registry,
        )
        self._kv_cache = Gauge(
            f"hearth_{service}_kv_cache_usage_ratio",
            "Fraction (0..1) of the engine's KV cache in use; NaN where the engine does not say.",
            registry=metrics.registry,
        )
        self._gpu_present = Gauge(
            f"hearth_{service}_gpu_present",
            "1 when the worker reads a GPU through NVML, 0 where it has none (the GPU memory "
            "gauges are then 0 and mean nothing).",
            registry=metrics.registry,
        )
        self._gpu_total = Gauge(
            f"hearth_{service}_gpu_memory_total_bytes",
            "Memory of the worker's GPU, from NVML.",
            registry=metrics.registry,
        )
        self._gpu_free = Gauge(
            f"hearth_{service}_gpu_memory_free_bytes",
            "Free memory of the worker's GPU, from NVML.",
            registry=metrics.registry,
        )
        self._models = Gauge(
            f"hearth_{service}_models",
            "Models this worker may serve, by state (unloaded, loading, loaded, unloading, failed).",
            ["state"],
            registry=metrics.registry,
        )
        self._kv_cache.set(math.nan)
        for state in MODEL_STATES.values():
            self._models.labels(state).set(0)

    def observe_info(self, info: worker_pb2.WorkerInfo) -> None:
        """Set the GPU, load and model-state gauges from the worker's description of itself."""
        gpu = info.gpu
        self._gpu_present.set(1 if gpu.present else 0)
        self._gpu_total.set(gpu.memory_total_bytes if gpu.present else 0)
        self._gpu_free.set(gpu.memory_free_bytes if gpu.present else 0)
        self._waiting.set(info.load.waiting)
        has_kv = info.load.HasField("kv_cache_usage")
        self._kv_cache.set(info.load.kv_cache_usage if has_kv else math.nan)
        counts = dict.fromkeys(MODEL_STATES.values(), 0)
        for model in info.models:
            state = MODEL_STATES.get(model.state)
            if state is not None:
                counts[state] += 1
        for state, count in counts.items():
            self._models.labels(state).set(count)
