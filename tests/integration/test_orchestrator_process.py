"""orchestratord as a process (``python -m orchestratord``) against real NATS
and Postgres, with routerd, pool-managerd, workerd and memoryd played by a
small in-test gRPC server speaking the real contracts. Checks the wire:
submit/watch/get/list/cancel, typed errors with reasons, worker loss, NATS
copies, and the restart rules across a real stop and start."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats
import pytest

from hearth.api.events.v1 import events_pb2
from hearth.api.memory.v1 import memory_pb2, memory_pb2_grpc
from hearth.api.orchestrator.v1 import orchestrator_pb2 as pb
from hearth.api.orchestrator.v1 import orchestrator_pb2_grpc
from hearth.api.pool.v1 import pool_pb2, pool_pb2_grpc
from hearth.api.router.v1 import router_pb2, router_pb2_grpc
from hearth.api.worker.v1 import worker_pb2, worker_pb2_grpc
from hearth.embedded import EmbeddedNats, EmbeddedPostgres, free_port, wait_healthy
from hearth.errors import InvalidArgument, NotFound, from_rpc_error
from hearth.runtime import subjects
from hearth.runtime.interceptors import ErrorInterceptor

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(90)]


class _WorkerDown(Exception):
    """The stub worker's generation asked to take the worker down."""


class _DyingContext:
    """What Generate's "die" calls abort on inside a Session."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _WorkerDown(details)


class StubStack(
    router_pb2_grpc.RouterServiceServicer,
    pool_pb2_grpc.PoolServiceServicer,
    worker_pb2_grpc.WorkerServiceServicer,
    memory_pb2_grpc.MemoryServiceServicer,
):
    """Router, pool, one worker and memory on one port. The worker streams
    one token per ``token_seconds``; a prompt containing "die" makes it drop
    the stream with UNAVAILABLE after two tokens."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.token_seconds = 0.005
        self.leases: set[str] = set()
        self.released: list[str] = []
        self.cancelled: list[str] = []
        self.aborted: list[str] = []
        self.prompts: list[str] = []
        self.stored: list[memory_pb2.StoreRequest] = []

    async def Route(self, request: router_pb2.RouteRequest, context: object) -> router_pb2.RouteResponse:
        model = request.model or "tiny"
        if model != "tiny":
            from hearth.errors import NotFound as Missing

            raise Missing(f"no model {model}", reason="MODEL_NOT_FOUND", metadata={"model": model})
        report = router_pb2.RoutingReport(schema_version=1, policy_version="v1", chosen_target="tiny")
        report.candidates.add(target="tiny", selected=True, reason="ROLE_DEFAULT")
        return router_pb2.RouteResponse(chain=["tiny"], report=report)

    async def Place(self, request: pool_pb2.PlaceRequest, context: object) -> pool_pb2.PlaceResponse:
        lease_id = str(uuid.uuid4())
        self.leases.add(lease_id)
        lease = pool_pb2.WorkerLease(
            lease_id=lease_id,
            job_id=request.job_id,
            worker_id="stub-1",
            address=self.address,
            model=request.model,
        )
        return pool_pb2.PlaceResponse(lease=lease)

    async def Release(self, request: pool_pb2.ReleaseRequest, context: object) -> pool_pb2.ReleaseResponse:
        self.released.append(request.lease_id)
        released = request.lease_id in self.leases
        self.leases.discard(request.lease_id)
        return pool_pb2.ReleaseResponse(released=released)

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        self.prompts.append(request.prompt)
        finished = False
        try:
            yield worker_pb2.GenerateResponse(started=worker_pb2.GenerationStarted(input_tokens=3))
            for i in range(request.max_tokens):
                if "die" in request.prompt and i == 2:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "worker going down")
                await asyncio.sleep(self.token_seconds)
                yield worker_pb2.GenerateResponse(tokens=worker_pb2.TokenChunk(text=f"w{i} ", token_count=1))
            yield worker_pb2.GenerateResponse(
                finished=worker_pb2.GenerationFinished(
                    finish_reason=worker_pb2.FINISH_REASON_LENGTH,
                    input_tokens=3,
                    output_tokens=request.max_tokens,
                )
            )
            finished = True
        finally:
            # A call the client cancels ends here with CancelledError, or with
            # GeneratorExit when it was parked at a yield.
            if not finished and "die" not in request.prompt:
                self.cancelled.append(request.job_id)

    async def Session(
        self, requests: AsyncIterator[worker_pb2.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.SessionResponse]:
        """Generate's streams, one frame per message; a generation that
        "dies" takes the whole session down (UNAVAILABLE), as a worker
        process that dies would; an abort cancels that generation."""
        frames: asyncio.Queue[worker_pb2.GenerationUpdate | None] = asyncio.Queue()
        running: dict[str, asyncio.Task[None]] = {}

        async def generate(start: worker_pb2.GenerateRequest) -> None:
            try:
                async for message in self.Generate(start, _DyingContext()):  # type: ignore[arg-type]
                    frames.put_nowait(worker_pb2.GenerationUpdate(job_id=start.job_id, event=message))
            except _WorkerDown:
                frames.put_nowait(None)

        async def read() -> None:
            async for request in requests:
                if request.HasField("start"):
                    running[request.start.job_id] = asyncio.create_task(generate(request.start))
                elif request.HasField("abort"):
                    self.aborted.append(request.abort.job_id)
                    if request.abort.job_id in running:
                        running[request.abort.job_id].cancel()

        reader = asyncio.create_task(read())
        try:
            while True:
                update = await frames.get()
                if update is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "worker going down")
                yield worker_pb2.SessionResponse(updates=[update])
        finally:
            reader.cancel()
            for task in running.values():
                task.cancel()
            await asyncio.gather(reader, *running.values(), return_exceptions=True)

    async def Abort(self, request: worker_pb2.AbortRequest, context: object) -> worker_pb2.AbortResponse:
        self.aborted.append(request.job_id)
        return worker_pb2.AbortResponse(aborted=True)

    async def GetInfo(
        self, request: worker_pb2.GetInfoRequest, context: object
    ) -> worker_pb2.GetInfoResponse:
        return worker_pb2.GetInfoResponse(worker=worker_pb2.WorkerInfo(worker_id="stub-1", engine="sim"))

    async def GetContext(
        self, request: memory_pb2.GetContextRequest, context: object
    ) -> memory_pb2.GetContextResponse:
        item = memory_pb2.ContextItem(
            section=memory_pb2.CONTEXT_SECTION_RETRIEVED,
            memory=memory_pb2.Memory(memory_id="m-1", text="Remember: blue."),
            text="Remember: blue.",
            tokens=4,
        )
        return memory_pb2.GetContextResponse(items=[item], tokens=4)

    async def Store(self, request: memory_pb2.StoreRequest, context: object) -> memory_pb2.StoreResponse:
        self.stored.append(request)
        return memory_pb2.StoreResponse(memories=request.memories)


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, EmbeddedPostgres]]:
    root = Path(tmp_path_factory.mktemp("infra"))
    bus = EmbeddedNats(root / "nats")
    db = EmbeddedPostgres(root / "pg")
    bus.start()
    try:
        db.start()
        yield bus, db
    finally:
        db.stop()
        bus.stop()


@pytest.fixture
async def stubs() -> AsyncIterator[StubStack]:
    port = free_port()
    stack = StubStack(f"127.0.0.1:{port}")
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    router_pb2_grpc.add_RouterServiceServicer_to_server(stack, server)
    pool_pb2_grpc.add_PoolServiceServicer_to_server(stack, server)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(stack, server)
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(stack, server)
    server.add_insecure_port(stack.address)
    await server.start()
    try:
        yield stack
    finally:
        await server.stop(0)


class Orchestrator:
    def __init__(
        self, infra: tuple[EmbeddedNats, EmbeddedPostgres], stubs: StubStack, data_dir: Path
    ) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        bus, db = infra
        self.args = [
            sys.executable, "-m", "orchestratord",
            "--listen", self.address,
            "--database-url", db.url,
            "--router-address", stubs.address,
            "--pool-address", stubs.address,
            "--memory-address", stubs.address,
            "--nats-url", bus.url,
            "--data-dir", str(data_dir),
            "--max-running", "2",
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self.log = data_dir / "orchestratord.log"

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HEARTH_ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS": "1"}
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env
            )
        try:
            await wait_healthy(self.address, timeout=30)
        except TimeoutError:
            await self.stop()
            raise AssertionError(self.log.read_text()[-3000:]) from None

    async def stop(self) -> int:
        """SIGTERM and wait, without blocking the loop (the stubs serve the
        orchestrator's last calls while it stops)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
            return await proc.wait()


@pytest.fixture
async def orchestrator(
    infra: tuple[EmbeddedNats, EmbeddedPostgres], stubs: StubStack, tmp_path: Path
) -> AsyncIterator[Orchestrator]:
    process = Orchestrator(infra, stubs, tmp_path)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def watch(
    client: orchestrator_pb2_grpc.OrchestratorServiceStub, job_id: str, after: int = 0
) -> list[events_pb2.JobEvent]:
    return [
        reply.event
        async for reply in client.WatchJob(pb.WatchJobRequest(job_id=job_id, after_sequence=after))
    ]


async def test_jobs_over_the_wire(
    orchestrator: Orchestrator, stubs: StubStack, infra: tuple[EmbeddedNats, EmbeddedPostgres]
) -> None:
    copies: list[events_pb2.JobEvent] = []
    bus = await nats.connect(infra[0].url)

    async def on_copy(msg: object) -> None:
        copies.append(events_pb2.JobEvent.FromString(msg.data))  # type: ignore[attr-defined]

    await bus.subscribe(subjects.JOB_EVENT_ALL, cb=on_copy)
    async with grpc.aio.insecure_channel(orchestrator.address) as channel:
        client = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        request_id = str(uuid.uuid4())
        spec = pb.JobSpec(
            prompt="hello there", max_tokens=5, use_memory_context=True, store_in_memory=True, project_id="p"
        )
        submitted = await client.SubmitJob(pb.SubmitJobRequest(spec=spec, request_id=request_id))
        job_id = submitted.job.job_id
        assert submitted.job.state == pb.JOB_STATE_QUEUED and not submitted.deduplicated
        assert submitted.job.routing_report.chosen_target == "tiny"
        events = await watch(client, job_id)
        assert [e.WhichOneof("kind") for e in events] == ["queued", "started", *["tokens"] * 5, "completed"]
        assert [e.sequence for e in events] == list(range(1, 9))
        again = await client.SubmitJob(pb.SubmitJobRequest(spec=spec, request_id=request_id))
        assert again.deduplicated and again.job.job_id == job_id

        job = (await client.GetJob(pb.GetJobRequest(job_id=job_id))).job
        assert (
            job.state == pb.JOB_STATE_COMPLETED and job.output == "w0 w1 w2 w3 w4 " and job.last_sequence == 8
        )
        assert job.run.worker_id == "stub-1" and job.run.engine == "sim" and job.run.output_tokens == 5
        assert list(job.run.context_memory_ids) == ["m-1"] and len(job.run.trace_id) == 32
        assert stubs.prompts[0].startswith("Context from memory:") and stubs.prompts[0].endswith(
            "hello there"
        )
        assert (await watch(client, job_id, after=6))[0].sequence == 7

        listed = await client.ListJobs(pb.ListJobsRequest(page_size=10, state=pb.JOB_STATE_COMPLETED))
        assert job_id in [j.job_id for j in listed.jobs]

        # Errors come back typed, with their reasons and fields.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(prompt="hi", model="huge")))
        missing = from_rpc_error(caught.value)
        assert isinstance(missing, NotFound) and missing.reason == "MODEL_NOT_FOUND"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(prompt="  ")))
        invalid = from_rpc_error(caught.value)
        assert isinstance(invalid, InvalidArgument) and invalid.metadata["field"] == "spec.prompt"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.GetJob(pb.GetJobRequest(job_id=str(uuid.uuid4())))
        assert from_rpc_error(caught.value).reason == "JOB_NOT_FOUND"

        # A worker that goes away mid-stream.
        lost = await client.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(prompt="please die", max_tokens=9)))
        lost_events = await watch(client, lost.job.job_id)
        assert lost_events[-1].failed.reason == "WORKER_LOST"
        assert [e.WhichOneof("kind") for e in lost_events][1:] == ["started", "tokens", "tokens", "failed"]

        # Cancel mid-stream: the worker's call is cancelled and it is told to abort.
        stubs.token_seconds = 0.05
        slow = await client.SubmitJob(
            pb.SubmitJobRequest(spec=pb.JobSpec(prompt="take your time", max_tokens=200))
        )
        stream = client.WatchJob(pb.WatchJobRequest(job_id=slow.job.job_id))
        seen = []
        async for reply in stream:
            seen.append(reply.event)
            if reply.event.HasField("tokens"):
                cancelled = await client.CancelJob(
                    pb.CancelJobRequest(job_id=slow.job.job_id, reason="enough")
                )
                assert cancelled.job.state == pb.JOB_STATE_CANCELLED
        assert seen[-1].HasField("cancelled") and seen[-1].sequence == cancelled.job.last_sequence
        assert sum(e.HasField("cancelled") for e in seen) == 1
        async with asyncio.timeout(5):
            while slow.job.job_id not in stubs.cancelled or slow.job.job_id not in stubs.aborted:
                await asyncio.sleep(0.02)
        async with asyncio.timeout(5):
            while stubs.leases or len(stubs.stored) < 1:
                await asyncio.sleep(0.02)
        assert stubs.stored[0].request_id == job_id
        assert stubs.stored[0].memories[0].text == "hello there\n\nw0 w1 w2 w3 w4 "

    async with asyncio.timeout(5):
        while not any(c.job_id == slow.job.job_id and c.HasField("cancelled") for c in copies):
            await asyncio.sleep(0.02)
    kinds = [c.WhichOneof("kind") for c in copies if c.job_id == job_id]
    assert kinds == ["queued", "started", "completed"]
    await bus.close()


async def test_restart_fails_running_jobs_and_runs_queued_ones(
    infra: tuple[EmbeddedNats, EmbeddedPostgres], stubs: StubStack, tmp_path: Path
) -> None:
    stubs.token_seconds = 0.05
    first = Orchestrator(infra, stubs, tmp_path)
    await first.start()
    async with grpc.aio.insecure_channel(first.address) as channel:
        client = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        spec = pb.JobSpec(prompt="long job", max_tokens=400)
        running = [(await client.SubmitJob(pb.SubmitJobRequest(spec=spec))).job.job_id for _ in range(2)]
        waiting = (
            await client.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(prompt="short", max_tokens=3)))
        ).job
        async with asyncio.timeout(10):
            while len(stubs.prompts) < 2:  # max_running is 2: the third waits in the queue
                await asyncio.sleep(0.02)
            while True:
                job = (await client.GetJob(pb.GetJobRequest(job_id=running[0]))).job
                if job.output:
                    break
                await asyncio.sleep(0.02)
    assert await first.stop() == 0
    assert set(running) <= set(stubs.cancelled)  # their Generate calls were cancelled on stop

    stubs.token_seconds = 0.001
    second = Orchestrator(infra, stubs, tmp_path)
    await second.start()
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            client = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            for job_id in running:
                events = await watch(client, job_id)
                assert events[-1].failed.reason == "ORCHESTRATOR_RESTARTED"
                assert sum(e.HasField("failed") for e in events) == 1
                assert [e.sequence for e in events] == list(range(1, len(events) + 1))
                job = (await client.GetJob(pb.GetJobRequest(job_id=job_id))).job
                assert job.state == pb.JOB_STATE_FAILED and job.end_reason == "ORCHESTRATOR_RESTARTED"
            # Tokens relayed before the stop were flushed, so the output survives.
            job = (await client.GetJob(pb.GetJobRequest(job_id=running[0]))).job
            assert job.output.startswith("w0 ")
            requeued = await watch(client, waiting.job_id)
            assert requeued[-1].HasField("completed")
    finally:
        assert await second.stop() == 0
