"""pool-managerd as a process: a real NATS, real heartbeat protos published by
the test (standing in for workers), and the PoolService over gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import nats
import pytest
from nats.aio.client import Client

from hearth.api.events.v1 import events_pb2
from hearth.api.pool.v1 import pool_pb2, pool_pb2_grpc
from hearth.api.worker.v1 import worker_pb2
from hearth.embedded import EmbeddedNats
from hearth.errors import HearthError, from_rpc_error
from hearth.runtime import subjects
from tests.integration.service_process import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(90)]

HEARTBEAT_SECONDS = 0.25


class PoolManager:
    def __init__(self, address: str, nats_url: str) -> None:
        self.address = address
        self.nats_url = nats_url


@pytest.fixture(scope="module")
def pool_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolManager]:
    root = tmp_path_factory.mktemp("pool-managerd")
    bus = EmbeddedNats(root / "nats")
    bus.start()
    args = ["--nats-url", bus.url, "--data-dir", str(root / "data"), "--trace-to-files", "false"]
    try:
        with ServiceProcess("pool_managerd", root / "pool-managerd.log", *args) as service:
            yield PoolManager(service.address, bus.url)
    finally:
        bus.stop()


class FakeWorkers:
    """Publishes a WorkerHeartbeat for each worker in ``beating`` every
    HEARTBEAT_SECONDS, as workerd would."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.beating: dict[str, worker_pb2.WorkerInfo] = {}

    def add(self, worker_id: str, model: str, *, max_concurrency: int = 1) -> None:
        self.beating[worker_id] = worker_pb2.WorkerInfo(
            worker_id=worker_id,
            address=f"{worker_id}.test:50051",
            engine="sim",
            models=[worker_pb2.ModelInfo(name=model, context_length=4096)],
            state=worker_pb2.WORKER_STATE_READY,
            max_concurrency=max_concurrency,
        )

    async def beat_forever(self) -> None:
        while True:
            for worker_id, info in list(self.beating.items()):
                heartbeat = events_pb2.WorkerHeartbeat(worker=info, interval_seconds=HEARTBEAT_SECONDS)
                await self.client.publish(subjects.worker_heartbeat(worker_id), heartbeat.SerializeToString())
            await asyncio.sleep(HEARTBEAT_SECONDS)


class PoolChanges:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    async def on_message(self, msg: object) -> None:
        change = events_pb2.PoolChanged.FromString(msg.data)  # type: ignore[attr-defined]
        self.seen.append((change.worker_id, change.change))

    async def wait_for(self, worker_id: str, change: int) -> None:
        async def seen() -> bool:
            return (worker_id, change) in self.seen

        name = events_pb2.PoolChanged.Change.Name(change)
        await wait_for(seen, 5, f"PoolChanged {name} for {worker_id}")


@pytest.fixture
async def nats_client(pool_manager: PoolManager) -> AsyncIterator[Client]:
    client = await nats.connect(pool_manager.nats_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def workers(nats_client: Client) -> AsyncIterator[FakeWorkers]:
    fake = FakeWorkers(nats_client)
    task = asyncio.create_task(fake.beat_forever())
    try:
        yield fake
    finally:
        task.cancel()
        await asyncio.wait([task])


@pytest.fixture
async def changes(nats_client: Client) -> PoolChanges:
    recorder = PoolChanges()
    await nats_client.subscribe(subjects.POOL_CHANGED, cb=recorder.on_message)
    await nats_client.flush()
    return recorder


@pytest.fixture
async def pool(pool_manager: PoolManager) -> AsyncIterator[pool_pb2_grpc.PoolServiceStub]:
    async with grpc.aio.insecure_channel(pool_manager.address) as channel:
        yield pool_pb2_grpc.PoolServiceStub(channel)


async def listed_ids(pool: pool_pb2_grpc.PoolServiceStub, prefix: str) -> list[str]:
    reply = await pool.ListWorkers(pool_pb2.ListWorkersRequest(page_size=1000), timeout=5)
    return [w.info.worker_id for w in reply.workers if w.info.worker_id.startswith(prefix)]


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def place_error(pool: pool_pb2_grpc.PoolServiceStub, job_id: str, model: str) -> HearthError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pool.Place(pool_pb2.PlaceRequest(job_id=job_id, model=model), timeout=5)
    return from_rpc_error(caught.value)


async def test_place_release_list_and_drain(
    pool: pool_pb2_grpc.PoolServiceStub, workers: FakeWorkers, changes: PoolChanges
) -> None:
    workers.add("lease-a", "m1")
    workers.add("lease-b", "m1")

    async def both_listed() -> bool:
        return await listed_ids(pool, "lease-") == ["lease-a", "lease-b"]

    await wait_for(both_listed, 10, "both workers listed")

    first = (await pool.Place(pool_pb2.PlaceRequest(job_id="job-1", model="m1"), timeout=5)).lease
    second = (await pool.Place(pool_pb2.PlaceRequest(job_id="job-2", model="m1"), timeout=5)).lease
    assert (first.worker_id, first.address, first.context_length) == ("lease-a", "lease-a.test:50051", 4096)
    assert second.worker_id == "lease-b"
    full = await place_error(pool, "job-3", "m1")
    assert full.reason == "NO_CAPACITY" and full.retry_after == pytest.approx(0.2)

    assert (await pool.Release(pool_pb2.ReleaseRequest(lease_id=first.lease_id), timeout=5)).released
    assert not (await pool.Release(pool_pb2.ReleaseRequest(lease_id=first.lease_id), timeout=5)).released

    page = await pool.ListWorkers(pool_pb2.ListWorkersRequest(page_size=1), timeout=5)
    ids = [w.info.worker_id for w in page.workers]
    while page.next_page_token:
        request = pool_pb2.ListWorkersRequest(page_size=1, page_token=page.next_page_token)
        page = await pool.ListWorkers(request, timeout=5)
        ids += [w.info.worker_id for w in page.workers]
    assert [i for i in ids if i.startswith("lease-")] == ["lease-a", "lease-b"]
    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await pool.ListWorkers(pool_pb2.ListWorkersRequest(page_token="garbage"), timeout=5)
    assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(bad_token.value).metadata["field"] == "page_token"

    drained = (await pool.Drain(pool_pb2.DrainRequest(worker_id="lease-a"), timeout=5)).worker
    assert drained.info.state == worker_pb2.WORKER_STATE_DRAINING
    # lease-a is free but drained, lease-b is full.
    assert (await place_error(pool, "job-4", "m1")).reason == "NO_CAPACITY"
    await pool.Release(pool_pb2.ReleaseRequest(lease_id=second.lease_id), timeout=5)
    third = (await pool.Place(pool_pb2.PlaceRequest(job_id="job-4", model="m1"), timeout=5)).lease
    assert third.worker_id == "lease-b"

    await changes.wait_for("lease-a", events_pb2.PoolChanged.CHANGE_DRAINING)

    unknown = await place_error(pool, "job-5", "no-such-model")
    # Right after start the pool may still be hearing from workers; that ends within one TTL.
    deadline = time.monotonic() + 5
    while unknown.reason == "POOL_WARMING_UP" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        unknown = await place_error(pool, "job-5", "no-such-model")
    assert unknown.reason == "MODEL_NOT_FOUND"
    assert unknown.metadata == {"model": "no-such-model"}
    missing = await _drain_error(pool, "ghost")
    assert missing.reason == "WORKER_NOT_FOUND"


async def _drain_error(pool: pool_pb2_grpc.PoolServiceStub, worker_id: str) -> HearthError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pool.Drain(pool_pb2.DrainRequest(worker_id=worker_id), timeout=5)
    return from_rpc_error(caught.value)


async def test_a_worker_whose_heartbeats_stop_is_dropped_within_3_seconds(
    pool: pool_pb2_grpc.PoolServiceStub, workers: FakeWorkers, changes: PoolChanges
) -> None:
    workers.add("expiry-live", "m2")
    workers.add("expiry-dying", "m2", max_concurrency=4)

    async def both_listed() -> bool:
        return await listed_ids(pool, "expiry-") == ["expiry-dying", "expiry-live"]

    await wait_for(both_listed, 10, "both workers listed")
    await changes.wait_for("expiry-dying", events_pb2.PoolChanged.CHANGE_JOINED)
    lease = (await pool.Place(pool_pb2.PlaceRequest(job_id="job-x", model="m2"), timeout=5)).lease
    assert lease.worker_id == "expiry-dying"

    del workers.beating["expiry-dying"]

    async def dying_dropped() -> bool:
        return await listed_ids(pool, "expiry-") == ["expiry-live"]

    await wait_for(dying_dropped, 3, "expiry-dying dropped from ListWorkers")
    await changes.wait_for("expiry-dying", events_pb2.PoolChanged.CHANGE_LEFT)
    # Its lease was forgotten with it.
    assert not (await pool.Release(pool_pb2.ReleaseRequest(lease_id=lease.lease_id), timeout=5)).released
