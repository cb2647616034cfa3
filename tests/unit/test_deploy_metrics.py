"""The metrics added for the dashboards and alert rules, read from the registries the services
serve: the worker's GPU, load and model-state gauges (from the WorkerInfo its heartbeats carry),
the orchestrator's queue capacity, the router's attempts, breakers and budget usage, and
memoryd's collection size."""

from __future__ import annotations

import asyncio
import math

import pytest

from hearth.api.worker.v1 import worker_pb2
from hearth.runtime import ServiceMetrics
from memoryd.adapters.metrics import CollectionSizeGauge
from orchestratord.adapters.metrics import OrchestratorMetrics
from tests.unit.test_router_budget import Clocks, MemoryLedger, accounting, outcome, reserve_request
from workerd.adapters.metrics import WorkerMetrics

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

GIB = 1 << 30


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    found: float | None = metrics.registry.get_sample_value(name, labels)
    return found


def test_the_worker_gauges_follow_its_description_of_itself() -> None:
    metrics = ServiceMetrics("worker")
    worker = WorkerMetrics(metrics)
    assert value(metrics, "hearth_worker_models", state="loaded") == 0
    assert math.isnan(value(metrics, "hearth_worker_kv_cache_usage_ratio") or 0.0)

    info = worker_pb2.WorkerInfo(worker_id="w")
    info.gpu.present, info.gpu.memory_total_bytes, info.gpu.memory_free_bytes = True, 32 * GIB, 3 * GIB
    info.load.waiting, info.load.kv_cache_usage = 4, 0.75
    info.models.add(name="a", state=worker_pb2.MODEL_STATE_LOADED)
    info.models.add(name="b", state=worker_pb2.MODEL_STATE_LOADED)
    info.models.add(name="c", state=worker_pb2.MODEL_STATE_FAILED)
    worker.observe_info(info)
    assert value(metrics, "hearth_worker_gpu_present") == 1
    assert value(metrics, "hearth_worker_gpu_memory_total_bytes") == 32 * GIB
    assert value(metrics, "hearth_worker_gpu_memory_free_bytes") == 3 * GIB
    assert value(metrics, "hearth_worker_waiting_requests") == 4
    assert value(metrics, "hearth_worker_kv_cache_usage_ratio") == pytest.approx(0.75)
    assert value(metrics, "hearth_worker_models", state="loaded") == 2
    assert value(metrics, "hearth_worker_models", state="failed") == 1
    assert value(metrics, "hearth_worker_models", state="unloaded") == 0

    # No GPU (a CPU machine) and an engine that says nothing of its KV cache; a model unloaded.
    bare = worker_pb2.WorkerInfo(worker_id="w")
    bare.models.add(name="a", state=worker_pb2.MODEL_STATE_UNLOADED)
    worker.observe_info(bare)
    assert value(metrics, "hearth_worker_gpu_present") == 0
    assert value(metrics, "hearth_worker_gpu_memory_free_bytes") == 0
    assert math.isnan(value(metrics, "hearth_worker_kv_cache_usage_ratio") or 0.0)
    assert value(metrics, "hearth_worker_models", state="loaded") == 0
    assert value(metrics, "hearth_worker_models", state="unloaded") == 1


def test_the_decode_rate_is_a_histogram() -> None:
    metrics = ServiceMetrics("worker")
    WorkerMetrics(metrics).decode_rate.observe(42.0)
    assert value(metrics, "hearth_worker_decode_rate_tokens_per_second_count") == 1
    assert value(metrics, "hearth_worker_decode_rate_tokens_per_second_bucket", le="60.0") == 1
    assert value(metrics, "hearth_worker_decode_rate_tokens_per_second_bucket", le="40.0") == 0


def test_the_queue_capacity_is_exported() -> None:
    metrics = ServiceMetrics("orchestrator")
    OrchestratorMetrics(metrics, queue_capacity=64)
    assert value(metrics, "hearth_orchestrator_queue_capacity") == 64


async def test_the_router_counts_attempts_breakers_and_budget_usage() -> None:
    acc, metrics = accounting(MemoryLedger(), Clocks())
    await acc.start()
    try:
        # Both targets start closed, every series is there at 0.
        assert value(metrics, "hearth_router_breakers", state="CLOSED") == 2
        assert value(metrics, "hearth_router_breakers", state="OPEN") == 0
        assert value(metrics, "hearth_router_budget_usage_ratio", scope_kind="project", period="day") == 0
        assert value(metrics, "hearth_router_attempts_total", result="failure", position="fallback") == 0

        reply = await acc.reserve(reserve_request("j1"))  # 0.04 against a daily hard limit of 0.1
        assert value(metrics, "hearth_router_budget_usage_ratio", scope_kind="project", period="day") == (
            pytest.approx(0.4)
        )
        assert value(metrics, "hearth_router_budget_usage_ratio", scope_kind="agent", period="month") == (
            pytest.approx(0.04)
        )
        await acc.report_outcome(outcome("j1", reply.reservation_id))
        assert value(metrics, "hearth_router_attempts_total", result="success", position="first") == 1

        # Two failures open the breaker of "cloud" (the policy's breaker.failures is 2).
        for job in ("j2", "j3"):
            failed = await acc.reserve(reserve_request(job, attempt=2))
            await acc.report_outcome(outcome(job, failed.reservation_id, success=False, attempt=2))
        assert value(metrics, "hearth_router_attempts_total", result="failure", position="fallback") == 2
        assert value(metrics, "hearth_router_breakers", state="OPEN") == 1
        assert value(metrics, "hearth_router_breakers", state="CLOSED") == 1
    finally:
        await acc.stop()


async def test_the_collection_size_is_read_at_start_and_kept_through_a_failed_read() -> None:
    metrics = ServiceMetrics("memory")
    answers: list[int | Exception] = [7, RuntimeError("qdrant is away"), 9]

    async def read() -> int:
        answer = answers.pop(0) if answers else 9
        if isinstance(answer, Exception):
            raise answer
        return answer

    gauge = CollectionSizeGauge(metrics, read, interval_seconds=0.01)
    await gauge.start()
    await gauge.start()  # twice is a no-op
    assert value(metrics, "hearth_memory_collection_points") == 7
    await gauge.refresh()
    assert value(metrics, "hearth_memory_collection_points") == 7  # the failed read kept the value
    await asyncio.sleep(0.05)
    assert value(metrics, "hearth_memory_collection_points") == 9
    await gauge.stop()
    await gauge.stop()
