"""PoolServicer: validation, page tokens, the Place span and metrics, the
Drain notice. Called directly, over a real PoolView."""

from __future__ import annotations

import base64

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hearth.api.pool.v1 import pool_pb2
from hearth.api.worker.v1 import worker_pb2
from hearth.errors import InvalidArgument, NotFound
from hearth.runtime import JOB_ID_ATTRIBUTE, ServiceMetrics
from pool_managerd.adapters.heartbeats import snapshot_from_info
from pool_managerd.api.page_tokens import decode_page_token
from pool_managerd.api.servicer import PoolServicer
from pool_managerd.domain.pool import ChangeKind, PoolChange, PoolView

pytestmark = pytest.mark.unit


class RecordingSink:
    def __init__(self) -> None:
        self.changes: list[PoolChange] = []

    async def publish(self, change: PoolChange) -> None:
        self.changes.append(change)


class Harness:
    def __init__(self) -> None:
        self.now = 100.0
        self.pool = PoolView(2.0)
        self.sink = RecordingSink()
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = ServiceMetrics("pool_manager")
        self.servicer = PoolServicer(
            self.pool,
            self.sink,
            tracer=provider.get_tracer("test"),
            metrics=self.metrics,
            clock=lambda: self.now,
            wall_clock=lambda: 1_700_000_000.0,
        )

    def beat(self, worker_id: str, *, max_concurrency: int = 2) -> None:
        info = worker_pb2.WorkerInfo(
            worker_id=worker_id,
            address=f"{worker_id}:1",
            engine="sim",
            models=[worker_pb2.ModelInfo(name="m", context_length=4096)],
            state=worker_pb2.WORKER_STATE_READY,
            max_concurrency=max_concurrency,
            gpu=worker_pb2.GpuInfo(present=True, name="RTX 5090"),
        )
        self.pool.observe(snapshot_from_info(info), self.now)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def harness() -> Harness:
    return Harness()


async def test_place_span_carries_the_job_and_the_chosen_worker(harness: Harness) -> None:
    harness.beat("w1")
    reply = await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="job-7", model="m"), None)
    assert reply.lease.worker_id == "w1" and reply.lease.context_length == 4096
    assert reply.lease.create_time.seconds == 1_700_000_000
    (span,) = harness.spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes[JOB_ID_ATTRIBUTE] == "job-7"
    assert span.attributes["hearth.worker_id"] == "w1"
    assert harness.sample("hearth_pool_manager_placements_total", result="placed") == 1.0
    assert harness.sample("hearth_pool_manager_workers") == 1.0


async def test_place_failures_are_counted_by_reason(harness: Harness) -> None:
    with pytest.raises(NotFound):
        await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j", model="m"), None)
    with pytest.raises(InvalidArgument) as bad:
        await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j"), None)
    assert bad.value.field == "model"
    assert harness.sample("hearth_pool_manager_placements_total", result="model_not_found") == 1.0
    assert harness.sample("hearth_pool_manager_placements_total", result="invalid_field") == 1.0


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (pool_pb2.PlaceRequest(model="m"), "job_id"),
        (pool_pb2.ReleaseRequest(), "lease_id"),
        (pool_pb2.DrainRequest(), "worker_id"),
        (pool_pb2.ListWorkersRequest(page_size=-1), "page_size"),
        (pool_pb2.ListWorkersRequest(page_token="not a token"), "page_token"),
        (
            pool_pb2.ListWorkersRequest(page_token=base64.urlsafe_b64encode(b"offset:2").decode()),
            "page_token",
        ),
    ],
)
async def test_bad_requests_name_the_field(harness: Harness, request_message: object, field: str) -> None:
    rpc = {
        pool_pb2.PlaceRequest: harness.servicer.Place,
        pool_pb2.ReleaseRequest: harness.servicer.Release,
        pool_pb2.DrainRequest: harness.servicer.Drain,
        pool_pb2.ListWorkersRequest: harness.servicer.ListWorkers,
    }[type(request_message)]
    with pytest.raises(InvalidArgument) as bad:
        await rpc(request_message, None)
    assert bad.value.field == field


async def test_list_workers_pages_with_opaque_tokens(harness: Harness) -> None:
    for i in range(5):
        harness.beat(f"w{i}")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await harness.servicer.ListWorkers(
            pool_pb2.ListWorkersRequest(page_size=2, page_token=token), None
        )
        seen += [w.info.worker_id for w in reply.workers]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
        assert token != seen[-1]  # opaque, not the bare id
        assert decode_page_token(token) == seen[-1]
    assert seen == [f"w{i}" for i in range(5)] and pages == 3
    everything = await harness.servicer.ListWorkers(pool_pb2.ListWorkersRequest(), None)
    assert len(everything.workers) == 5 and everything.next_page_token == ""


async def test_listing_keeps_the_heartbeat_details_and_shows_leases(harness: Harness) -> None:
    harness.beat("w1")
    await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j", model="m"), None)
    harness.now += 0.5
    (worker,) = (await harness.servicer.ListWorkers(pool_pb2.ListWorkersRequest(), None)).workers
    assert worker.info.gpu.name == "RTX 5090" and worker.info.engine == "sim"
    assert worker.leased == 1
    assert worker.heartbeat_age.ToMilliseconds() == 500
    assert worker.last_heartbeat_time.ToMilliseconds() == 1_700_000_000_000 - 500


async def test_drain_shows_draining_and_publishes_once(harness: Harness) -> None:
    harness.beat("w1")
    first = await harness.servicer.Drain(pool_pb2.DrainRequest(worker_id="w1"), None)
    again = await harness.servicer.Drain(pool_pb2.DrainRequest(worker_id="w1"), None)
    assert first.worker.info.state == again.worker.info.state == worker_pb2.WORKER_STATE_DRAINING
    assert harness.sink.changes == [PoolChange("w1", ChangeKind.DRAINING)]
    with pytest.raises(NotFound) as missing:
        await harness.servicer.Drain(pool_pb2.DrainRequest(worker_id="ghost"), None)
    assert missing.value.reason == "WORKER_NOT_FOUND"


async def test_release_reports_whether_it_freed_a_slot(harness: Harness) -> None:
    harness.beat("w1")
    lease = (await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j", model="m"), None)).lease
    first = await harness.servicer.Release(pool_pb2.ReleaseRequest(lease_id=lease.lease_id), None)
    second = await harness.servicer.Release(pool_pb2.ReleaseRequest(lease_id=lease.lease_id), None)
    assert (first.released, second.released) == (True, False)


def test_unset_max_concurrency_means_one_slot() -> None:
    info = worker_pb2.WorkerInfo(worker_id="w", models=[worker_pb2.ModelInfo(name="m", context_length=1)])
    assert snapshot_from_info(info).max_concurrency == 1
