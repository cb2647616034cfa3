"""Model lifecycle across processes: a real nats-server, pool-managerd and a sim
workerd that serves model a and may load b. Loads on demand through Place,
UnloadModel through the pool, idle unloading and Drain, observed through
ListWorkers and the worker's own answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from hearth.api.pool.v1 import pool_pb2, pool_pb2_grpc
from hearth.api.worker.v1 import worker_pb2, worker_pb2_grpc
from hearth.embedded import EmbeddedNats
from hearth.errors import HearthError, from_rpc_error
from tests.integration.service_process import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

WORKER_ID = "lifecycle-w1"
SIM_LOAD_SECONDS = 0.5
IDLE_UNLOAD_SECONDS = 1.0

LOADED = worker_pb2.MODEL_STATE_LOADED
UNLOADED = worker_pb2.MODEL_STATE_UNLOADED


@dataclass
class Stack:
    pool_address: str
    worker_address: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("lifecycle")
    bus = EmbeddedNats(root / "nats")
    bus.start()
    common = ["--nats-url", bus.url, "--log-format", "text", "--trace-to-files", "false"]
    pool = ServiceProcess(
        "pool_managerd", root / "pool-managerd.log", *common, "--data-dir", str(root / "pool")
    )
    worker = ServiceProcess(
        "workerd",
        root / "workerd.log",
        *common,
        "--data-dir",
        str(root / "worker"),
        "--engine",
        "sim",
        "--worker-id",
        WORKER_ID,
        "--model",
        "a",
        "--loadable-models",
        '["a", "b"]',
        "--sim-load-seconds",
        str(SIM_LOAD_SECONDS),
        "--idle-unload-seconds",
        str(IDLE_UNLOAD_SECONDS),
        "--sim-decode-seconds-per-step",
        "0.005",
        "--max-concurrency",
        "4",
        "--heartbeat-interval-seconds",
        "0.2",
        healthy_within=60,
        stop_within=15,
    )
    try:
        with pool, worker:
            yield Stack(pool.address, worker.address)
    finally:
        bus.stop()


@pytest.fixture
async def pool(stack: Stack) -> AsyncIterator[pool_pb2_grpc.PoolServiceStub]:
    async with grpc.aio.insecure_channel(stack.pool_address) as channel:
        yield pool_pb2_grpc.PoolServiceStub(channel)


@pytest.fixture
async def worker(stack: Stack) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    async with grpc.aio.insecure_channel(stack.worker_address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel)


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def listed(pool: pool_pb2_grpc.PoolServiceStub) -> pool_pb2.PooledWorker | None:
    reply = await pool.ListWorkers(pool_pb2.ListWorkersRequest(), timeout=5)
    return next((w for w in reply.workers if w.info.worker_id == WORKER_ID), None)


def states(worker: pool_pb2.PooledWorker | None) -> dict[str, int]:
    return {} if worker is None else {m.name: m.state for m in worker.info.models}


async def until_states(pool: pool_pb2_grpc.PoolServiceStub, expected: dict[str, int], what: str) -> None:
    async def reached() -> bool:
        return states(await listed(pool)) == expected

    await wait_for(reached, 15, what)


async def error_of(call: Awaitable[object]) -> HearthError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return from_rpc_error(caught.value)


async def place_when_loaded(
    pool: pool_pb2_grpc.PoolServiceStub, job_id: str, model: str
) -> pool_pb2.WorkerLease:
    """Place, retrying while the pool answers MODEL_LOADING (as the orchestrator does)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            reply = await pool.Place(pool_pb2.PlaceRequest(job_id=job_id, model=model), timeout=5)
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err)
            if error.reason != "MODEL_LOADING" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(error.retry_after or 0.1)
            continue
        return reply.lease


def generate_request(job_id: str, model: str, max_tokens: int) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        job_id=job_id, model=model, prompt="tell me a story", max_tokens=max_tokens
    )


async def test_load_on_demand_idle_unload_and_unload_through_the_pool(
    pool: pool_pb2_grpc.PoolServiceStub, worker: worker_pb2_grpc.WorkerServiceStub
) -> None:
    # The worker loaded its model at start; b is loadable. a stays loaded
    # though idle: it is the last one loaded.
    await until_states(pool, {"a": LOADED, "b": UNLOADED}, "a loaded and b unloaded")
    pooled = await listed(pool)
    assert pooled is not None
    info = pooled.info
    b = next(m for m in info.models if m.name == "b")
    assert b.load_estimate_seconds == pytest.approx(SIM_LOAD_SECONDS)

    loading = await error_of(pool.Place(pool_pb2.PlaceRequest(job_id="job-b1", model="b"), timeout=5))
    assert loading.reason == "MODEL_LOADING"
    assert loading.metadata == {"model": "b", "worker_id": WORKER_ID, "estimate_seconds": "0.5"}
    assert loading.retry_after == pytest.approx(SIM_LOAD_SECONDS)

    lease = await place_when_loaded(pool, "job-b1", "b")
    assert (lease.worker_id, lease.model, lease.address) == (WORKER_ID, "b", info.address)
    replies = [r async for r in worker.Generate(generate_request("job-b1", "b", 3), timeout=10)]
    assert replies[-1].finished.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    await pool.Release(pool_pb2.ReleaseRequest(lease_id=lease.lease_id), timeout=5)

    # a has been idle longer than idle_unload_seconds; b was used last and stays.
    await until_states(pool, {"a": UNLOADED, "b": LOADED}, "a unloaded for idleness")
    not_loaded = await error_of(
        _drain_stream(worker.Generate(generate_request("job-a0", "a", 3), timeout=10))
    )
    assert (not_loaded.reason, not_loaded.metadata["model"]) == ("MODEL_NOT_LOADED", "a")

    unloaded = await pool.UnloadModel(pool_pb2.UnloadModelRequest(model="b", worker_id=WORKER_ID), timeout=10)
    assert states(unloaded.worker) == {"a": UNLOADED, "b": UNLOADED}
    await until_states(pool, {"a": UNLOADED, "b": UNLOADED}, "the heartbeat agrees that b is unloaded")
    unknown = await error_of(pool.LoadModel(pool_pb2.LoadModelRequest(model="gpt-9"), timeout=5))
    assert unknown.reason == "MODEL_NOT_FOUND"


async def test_drain_lets_a_running_generation_finish_and_refuses_new_ones(
    pool: pool_pb2_grpc.PoolServiceStub, worker: worker_pb2_grpc.WorkerServiceStub
) -> None:
    lease = await place_when_loaded(pool, "job-long", "a")
    running = worker.Generate(generate_request("job-long", "a", 300), timeout=30)
    assert (await running.read()).WhichOneof("event") == "started"
    assert (await running.read()).WhichOneof("event") == "tokens"

    drained = await pool.Drain(pool_pb2.DrainRequest(worker_id=WORKER_ID), timeout=10)
    refused = await error_of(_drain_stream(worker.Generate(generate_request("job-late", "a", 3), timeout=10)))
    rest = []
    while (message := await running.read()) is not grpc.aio.EOF:
        rest.append(message)
    info = (await worker.GetInfo(worker_pb2.GetInfoRequest(), timeout=5)).worker
    no_load = await error_of(worker.LoadModel(worker_pb2.LoadModelRequest(model="b"), timeout=5))
    placed = await error_of(pool.Place(pool_pb2.PlaceRequest(job_id="job-after", model="a"), timeout=5))

    assert drained.worker.info.state == worker_pb2.WORKER_STATE_DRAINING
    assert refused.reason == "WORKER_DRAINING"
    finished = rest[-1].finished
    assert (finished.finish_reason, finished.output_tokens) == (worker_pb2.FINISH_REASON_LENGTH, 300)
    assert info.state == worker_pb2.WORKER_STATE_DRAINING
    assert no_load.reason == "WORKER_DRAINING"
    assert placed.reason == "NO_CAPACITY"
    await pool.Release(pool_pb2.ReleaseRequest(lease_id=lease.lease_id), timeout=5)


async def _drain_stream(call: grpc.aio.UnaryStreamCall) -> None:
    async for _ in call:
        pass
