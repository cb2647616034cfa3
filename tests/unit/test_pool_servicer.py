"""PoolServicer: validation, page tokens, the Place span and metrics, the
Drain notice, loads on demand and model commands. Called directly, over a real
PoolView, with a fake of the workers' control."""

from __future__ import annotations

import base64

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hearth.api.pool.v1 import pool_pb2
from hearth.api.worker.v1 import worker_pb2
from hearth.errors import FailedPrecondition, HearthError, InvalidArgument, NotFound, Unavailable
from hearth.runtime import JOB_ID_ATTRIBUTE, ServiceMetrics
from pool_managerd.adapters.heartbeats import snapshot_from_info
from pool_managerd.adapters.worker_control import BackgroundLoads
from pool_managerd.api.page_tokens import decode_page_token
from pool_managerd.api.servicer import PoolServicer
from pool_managerd.domain.pool import ChangeKind, ModelLoading, ModelState, PoolChange, PoolView, WorkerModel

pytestmark = pytest.mark.unit


class RecordingSink:
    def __init__(self) -> None:
        self.changes: list[PoolChange] = []

    async def publish(self, change: PoolChange) -> None:
        self.changes.append(change)


class FakeWorkers:
    """The workers' control: records every command; ``fail`` makes loads fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.fail: HearthError | None = None
        self.unreachable = False

    async def load_model(self, address: str, model: str) -> WorkerModel:
        self.calls.append(("load", address, model))
        if self.fail is not None:
            raise self.fail
        return WorkerModel(4096, ModelState.LOADED, load_estimate_seconds=1.5)

    async def unload_model(self, address: str, model: str, *, force: bool) -> WorkerModel:
        self.calls.append(("unload", address, model, force))
        return WorkerModel(4096, ModelState.UNLOADED, load_estimate_seconds=1.5)

    async def drain(self, address: str) -> None:
        self.calls.append(("drain", address))
        if self.unreachable:
            raise Unavailable("no route", reason="WORKER_UNREACHABLE")


class Harness:
    def __init__(self) -> None:
        self.now = 100.0
        self.pool = PoolView(2.0, load_retry_seconds=30.0)
        self.workers = FakeWorkers()
        self.loads = BackgroundLoads(self.pool, self.workers, clock=lambda: self.now)
        self.sink = RecordingSink()
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = ServiceMetrics("pool_manager")
        self.servicer = PoolServicer(
            self.pool,
            self.sink,
            workers=self.workers,
            begin_load=self.loads.begin,
            tracer=provider.get_tracer("test"),
            metrics=self.metrics,
            clock=lambda: self.now,
            wall_clock=lambda: 1_700_000_000.0,
        )

    def beat(self, worker_id: str, *, max_concurrency: int = 2, unloaded: str = "") -> None:
        models = [worker_pb2.ModelInfo(name="m", context_length=4096, state=worker_pb2.MODEL_STATE_LOADED)]
        if unloaded:
            models.append(
                worker_pb2.ModelInfo(
                    name=unloaded,
                    context_length=4096,
                    state=worker_pb2.MODEL_STATE_UNLOADED,
                    load_estimate_seconds=3,
                )
            )
        info = worker_pb2.WorkerInfo(
            worker_id=worker_id,
            address=f"{worker_id}:1",
            engine="sim",
            models=models,
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


async def test_drain_shows_draining_publishes_once_and_tells_the_worker(harness: Harness) -> None:
    harness.beat("w1")
    first = await harness.servicer.Drain(pool_pb2.DrainRequest(worker_id="w1"), None)
    harness.workers.unreachable = True
    again = await harness.servicer.Drain(pool_pb2.DrainRequest(worker_id="w1"), None)
    assert first.worker.info.state == again.worker.info.state == worker_pb2.WORKER_STATE_DRAINING
    assert harness.sink.changes == [PoolChange("w1", ChangeKind.DRAINING)]
    assert harness.workers.calls == [("drain", "w1:1"), ("drain", "w1:1")]
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


def model_state(worker: pool_pb2.PooledWorker, name: str) -> int:
    return next(m.state for m in worker.info.models if m.name == name)


async def test_place_for_an_unloaded_model_starts_one_load_then_places(harness: Harness) -> None:
    harness.beat("w1", unloaded="big")
    with pytest.raises(ModelLoading) as first:
        await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j1", model="big"), None)
    with pytest.raises(ModelLoading) as second:
        await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j2", model="big"), None)

    await harness.loads.settle()
    lease = (await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j1", model="big"), None)).lease

    assert first.value.metadata == {"model": "big", "worker_id": "w1", "estimate_seconds": "3.0"}
    assert first.value.retry_after == pytest.approx(1.0)
    assert second.value.order is None
    assert harness.workers.calls == [("load", "w1:1", "big")]  # one load for both
    assert lease.worker_id == "w1"
    assert harness.sample("hearth_pool_manager_placements_total", result="model_loading") == 2.0
    spans = harness.spans.get_finished_spans()
    assert spans[0].attributes is not None and spans[0].attributes["hearth.load_ordered"] is True


async def test_a_failed_load_makes_place_answer_model_load_failed(harness: Harness) -> None:
    harness.beat("w1", unloaded="big")
    harness.workers.fail = FailedPrecondition("needs 24 GiB, 20 free", reason="INSUFFICIENT_VRAM")
    with pytest.raises(ModelLoading):
        await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j1", model="big"), None)
    await harness.loads.settle()

    with pytest.raises(FailedPrecondition) as failed:
        await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j1", model="big"), None)

    assert failed.value.reason == "MODEL_LOAD_FAILED"
    assert failed.value.metadata["error"] == "needs 24 GiB, 20 free"
    assert harness.sample("hearth_pool_manager_placements_total", result="model_load_failed") == 1.0


async def test_load_model_forwards_to_the_worker_and_shows_the_result_at_once(harness: Harness) -> None:
    harness.beat("w1", unloaded="big")

    reply = await harness.servicer.LoadModel(pool_pb2.LoadModelRequest(model="big"), None)

    assert harness.workers.calls == [("load", "w1:1", "big")]
    assert reply.worker.info.worker_id == "w1"
    # The heartbeat still says unloaded; the worker's answer wins until the next one.
    assert model_state(reply.worker, "big") == worker_pb2.MODEL_STATE_LOADED
    lease = (await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j", model="big"), None)).lease
    assert lease.worker_id == "w1"


async def test_load_model_errors_pass_through_and_are_remembered(harness: Harness) -> None:
    harness.beat("w1", unloaded="big")
    harness.workers.fail = FailedPrecondition("too big", reason="INSUFFICIENT_VRAM")

    with pytest.raises(FailedPrecondition) as refused:
        await harness.servicer.LoadModel(pool_pb2.LoadModelRequest(model="big", worker_id="w1"), None)
    with pytest.raises(FailedPrecondition) as placed:
        await harness.servicer.Place(pool_pb2.PlaceRequest(job_id="j", model="big"), None)
    with pytest.raises(NotFound) as nowhere:
        await harness.servicer.LoadModel(pool_pb2.LoadModelRequest(model="gpt-9"), None)

    assert refused.value.reason == "INSUFFICIENT_VRAM"
    assert placed.value.reason == "MODEL_LOAD_FAILED"
    assert nowhere.value.reason == "MODEL_NOT_FOUND"


async def test_unload_model_forwards_force_and_shows_the_model_unloaded(harness: Harness) -> None:
    harness.beat("w1")

    reply = await harness.servicer.UnloadModel(pool_pb2.UnloadModelRequest(model="m", force=True), None)

    assert harness.workers.calls == [("unload", "w1:1", "m", True)]
    assert model_state(reply.worker, "m") == worker_pb2.MODEL_STATE_UNLOADED
    with pytest.raises(InvalidArgument) as bad:
        await harness.servicer.UnloadModel(pool_pb2.UnloadModelRequest(worker_id="w1"), None)
    assert bad.value.field == "model"
