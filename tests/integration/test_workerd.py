"""workerd as a real process: gRPC, NATS heartbeats and cancellations."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from hearth.api.events.v1 import events_pb2
from hearth.api.worker.v1 import worker_pb2, worker_pb2_grpc
from hearth.embedded import EmbeddedNats
from hearth.errors import InvalidArgument, NotFound, ResourceExhausted, from_rpc_error
from hearth.runtime import subjects
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration

SIM_WORKER_ID = "sim-worker-1"
SIM_MAX_CONCURRENCY = 4
HEARTBEAT_INTERVAL = 0.2


def worker_process(data_dir: Path, nats_url: str, *args: str) -> ServiceProcess:
    """``python -m workerd`` on a free port, its log in a file; spawned, not yet healthy."""
    data_dir.mkdir(parents=True, exist_ok=True)
    common = ["--nats-url", nats_url, "--data-dir", str(data_dir), "--log-format", "text"]
    log = data_dir / "workerd.log"
    worker = ServiceProcess("workerd", log, *common, *args, healthy_within=60, stop_within=15)
    worker.spawn()
    return worker


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sim_worker(
    nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    worker = worker_process(
        tmp_path_factory.mktemp("sim-worker"),
        nats_server.url,
        "--engine",
        "sim",
        "--worker-id",
        SIM_WORKER_ID,
        "--sim-decode-seconds-per-step",
        "0.005",
        "--max-concurrency",
        str(SIM_MAX_CONCURRENCY),
        "--heartbeat-interval-seconds",
        str(HEARTBEAT_INTERVAL),
    )
    asyncio.run(worker.healthy())
    yield worker
    worker.stop()


@pytest.fixture
async def stub(sim_worker: ServiceProcess) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    async with grpc.aio.insecure_channel(sim_worker.address) as channel:
        yield worker_pb2_grpc.WorkerServiceStub(channel)


@pytest.fixture
async def nats_client(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def generate_request(job_id: str, max_tokens: int = 6, model: str = "sim") -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        job_id=job_id, model=model, prompt="tell me a story", max_tokens=max_tokens
    )


async def get_info(stub: worker_pb2_grpc.WorkerServiceStub) -> worker_pb2.WorkerInfo:
    reply = await stub.GetInfo(worker_pb2.GetInfoRequest(), timeout=5)
    return reply.worker


async def until_idle(stub: worker_pb2_grpc.WorkerServiceStub) -> worker_pb2.WorkerInfo:
    """GetInfo once no generation runs (polled: the worker has no event for it)."""
    async with asyncio.timeout(10):
        while True:
            info = await get_info(stub)
            if not info.running:
                return info
            await asyncio.sleep(0.05)


async def read_rest(call: grpc.aio.UnaryStreamCall) -> list[worker_pb2.GenerateResponse]:
    """The remaining messages of a stream read with call.read() (the iterator
    and read() cannot be mixed on one call)."""
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


async def test_get_info_describes_the_worker(
    sim_worker: ServiceProcess, stub: worker_pb2_grpc.WorkerServiceStub
) -> None:
    info = await get_info(stub)

    assert info.worker_id == SIM_WORKER_ID
    assert info.address == sim_worker.address
    assert info.engine == "sim"
    assert [(m.name, m.context_length) for m in info.models] == [("sim", 8192)]
    assert info.state == worker_pb2.WORKER_STATE_READY
    assert info.max_concurrency == SIM_MAX_CONCURRENCY
    assert info.start_time.seconds > 0
    assert info.gpu.present == (info.gpu.memory_total_bytes > 0)


async def test_generate_streams_started_tokens_finished(stub: worker_pb2_grpc.WorkerServiceStub) -> None:
    before = (await get_info(stub)).stats

    replies = [reply async for reply in stub.Generate(generate_request("gen-1", max_tokens=6), timeout=10)]

    kinds = [reply.WhichOneof("event") for reply in replies]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert set(kinds[1:-1]) == {"tokens"}
    assert replies[0].started.input_tokens == 4
    chunks = [reply.tokens for reply in replies[1:-1]]
    assert sum(chunk.token_count for chunk in chunks) == 6
    assert len("".join(chunk.text for chunk in chunks).split()) == 6
    finished = replies[-1].finished
    assert finished.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert (finished.input_tokens, finished.output_tokens) == (4, 6)
    after = (await until_idle(stub)).stats
    assert after.requests_total == before.requests_total + 1
    assert after.tokens_generated_total == before.tokens_generated_total + 6


async def test_abort_mid_stream_ends_it_with_aborted(stub: worker_pb2_grpc.WorkerServiceStub) -> None:
    call = stub.Generate(generate_request("abort-1", max_tokens=5000), timeout=30)
    received = [await call.read(), await call.read()]
    assert received[1].WhichOneof("event") == "tokens"

    reply = await stub.Abort(worker_pb2.AbortRequest(job_id="abort-1"), timeout=5)
    received += await read_rest(call)

    assert reply.aborted is True
    finished = received[-1].finished
    assert finished.finish_reason == worker_pb2.FINISH_REASON_ABORTED
    streamed = sum(m.tokens.token_count for m in received if m.WhichOneof("event") == "tokens")
    assert finished.output_tokens == streamed < 5000
    again = await stub.Abort(worker_pb2.AbortRequest(job_id="abort-1"), timeout=5)
    assert again.aborted is False


async def test_a_client_that_goes_away_aborts_the_generation(stub: worker_pb2_grpc.WorkerServiceStub) -> None:
    before = (await get_info(stub)).stats.aborted_total
    call = stub.Generate(generate_request("gone-1", max_tokens=5000), timeout=30)
    await call.read()

    call.cancel()

    info = await until_idle(stub)
    assert info.stats.aborted_total == before + 1


async def test_a_cancel_broadcast_on_nats_aborts_the_job(
    stub: worker_pb2_grpc.WorkerServiceStub, nats_client: Client
) -> None:
    call = stub.Generate(generate_request("nats-cancel-1", max_tokens=5000), timeout=30)
    await call.read()

    cancel = events_pb2.CancelRequested(job_id="nats-cancel-1", reason="user")
    await nats_client.publish(subjects.JOB_CANCEL, cancel.SerializeToString())
    last = (await read_rest(call))[-1]

    assert last.finished.finish_reason == worker_pb2.FINISH_REASON_ABORTED


async def test_heartbeats_carry_the_worker(nats_client: Client) -> None:
    received: asyncio.Queue[events_pb2.WorkerHeartbeat] = asyncio.Queue()

    async def on_heartbeat(msg: Msg) -> None:
        received.put_nowait(events_pb2.WorkerHeartbeat.FromString(msg.data))

    await nats_client.subscribe(subjects.WORKER_HEARTBEAT_ALL, cb=on_heartbeat)
    heartbeat = await asyncio.wait_for(received.get(), timeout=5)

    assert heartbeat.worker.worker_id == SIM_WORKER_ID
    assert heartbeat.worker.state == worker_pb2.WORKER_STATE_READY
    assert heartbeat.worker.engine == "sim"
    assert heartbeat.interval_seconds == pytest.approx(HEARTBEAT_INTERVAL)


async def test_unknown_model_is_not_found(stub: worker_pb2_grpc.WorkerServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Generate(generate_request("bad-1", model="gpt-9"), timeout=5):
            pass

    error = from_rpc_error(caught.value)
    assert isinstance(error, NotFound)
    assert error.reason == "MODEL_NOT_FOUND"
    assert error.metadata["model"] == "gpt-9"


async def test_over_max_concurrency_the_worker_is_busy(stub: worker_pb2_grpc.WorkerServiceStub) -> None:
    calls = [stub.Generate(generate_request(f"busy-{i}", max_tokens=5000), timeout=30) for i in range(4)]
    for call in calls:
        await call.read()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Generate(generate_request("busy-extra"), timeout=5):
                pass
    finally:
        for call in calls:
            call.cancel()

    error = from_rpc_error(caught.value)
    assert isinstance(error, ResourceExhausted)
    assert error.reason == "WORKER_BUSY"
    assert error.retry_after == pytest.approx(0.5)
    await until_idle(stub)


@pytest.mark.slow
async def test_on_sigterm_it_announces_draining_and_exits_cleanly(
    nats_server: EmbeddedNats, nats_client: Client, tmp_path: Path
) -> None:
    states: asyncio.Queue[int] = asyncio.Queue()

    async def on_heartbeat(msg: Msg) -> None:
        states.put_nowait(events_pb2.WorkerHeartbeat.FromString(msg.data).worker.state)

    await nats_client.subscribe(subjects.worker_heartbeat("leaving-worker"), cb=on_heartbeat)
    worker = worker_process(tmp_path, nats_server.url, "--engine", "sim", "--worker-id", "leaving-worker")
    try:
        await worker.healthy()
        assert await asyncio.wait_for(states.get(), timeout=5) == worker_pb2.WORKER_STATE_READY

        worker.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            while await states.get() != worker_pb2.WORKER_STATE_DRAINING:
                pass
        returncode = await asyncio.to_thread(worker.proc.wait, 15)
    finally:
        worker.stop()

    assert returncode == 0, worker.log()


@pytest.mark.slow
async def test_transformers_engine_on_the_tiny_model(
    nats_server: EmbeddedNats, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "hearth.yaml"
    config.write_text(
        f"models:\n  - name: tiny\n    path: {tiny_model_dir}\n    context_length: 256\n"
        "worker:\n  engine: transformers\n  model: tiny\n  device: cpu\n"
    )
    worker = worker_process(
        tmp_path / "data", nats_server.url, "--config", str(config), "--worker-id", "tiny-1"
    )
    try:
        await worker.healthy()
        async with grpc.aio.insecure_channel(worker.address) as channel:
            tiny = worker_pb2_grpc.WorkerServiceStub(channel)
            info = await get_info(tiny)
            replies = [
                r async for r in tiny.Generate(generate_request("tiny-1", 8, model="tiny"), timeout=30)
            ]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in tiny.Generate(generate_request("tiny-2", 300, model="tiny"), timeout=30):
                    pass
    finally:
        worker.stop()

    assert (info.engine, [(m.name, m.context_length) for m in info.models]) == (
        "transformers",
        [("tiny", 256)],
    )
    assert replies[0].WhichOneof("event") == "started"
    finished = replies[-1].finished
    assert finished.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert finished.output_tokens == 8
    assert sum(r.tokens.token_count for r in replies if r.WhichOneof("event") == "tokens") == 8
    error = from_rpc_error(caught.value)
    assert isinstance(error, InvalidArgument)
    assert (error.reason, error.metadata["field"]) == ("CONTEXT_TOO_LONG", "max_tokens")


@pytest.mark.slow
def test_an_engine_that_cannot_start_exits_non_zero(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    config = tmp_path / "hearth.yaml"
    config.write_text(f"models:\n  - name: broken\n    path: {not_a_model}\nworker:\n  model: broken\n")

    worker = worker_process(tmp_path / "data", nats_server.url, "--config", str(config))
    returncode = worker.proc.wait(60)
    worker.stop()

    assert returncode != 0
    assert "the transformers engine failed to start" in worker.log()
