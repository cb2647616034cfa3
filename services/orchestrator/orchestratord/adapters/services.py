"""gRPC clients of the other services, behind the domain's ports.

Every client turns a gRPC error into the typed ``hearth.errors`` exception
(reason kept) with :func:`hearth.errors.from_rpc_error`; the worker client
turns it into :class:`WorkerError` with the job's end reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry import propagate

from hearth import chat
from hearth.api.memory.v1 import memory_pb2, memory_pb2_grpc
from hearth.api.pool.v1 import pool_pb2, pool_pb2_grpc
from hearth.api.router.v1 import router_pb2, router_pb2_grpc
from hearth.api.worker.v1 import worker_pb2, worker_pb2_grpc
from hearth.errors import HearthError, Unavailable, from_rpc_error, from_status
from orchestratord.adapters.storable import storable
from orchestratord.api.convert import DATA_CLASS_PROTO
from orchestratord.domain.context import ContextItem, ContextSection
from orchestratord.domain.jobs import RouteDecision
from orchestratord.domain.ports import (
    AttemptOutcome,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    Interaction,
    Reservation,
    RouteFacts,
    TokenChunk,
    WorkerError,
    WorkerLease,
)

log = logging.getLogger(__name__)

ChannelFactory = Callable[[str], grpc.aio.Channel]

_ROUTE_TIMEOUT = 10.0
_RELEASE_TIMEOUT = 5.0


class GrpcRouter:
    """The Router port over routerd's RouterService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = router_pb2_grpc.RouterServiceStub(channel)

    async def route(self, facts: RouteFacts) -> RouteDecision:
        request = router_pb2.RouteRequest(
            job_id=facts.job_id,
            model=facts.model,
            role=facts.role,
            prompt_tokens=facts.prompt_tokens,
            max_tokens=facts.max_tokens,
            needs_tools=facts.needs_tools,
            paths=list(facts.paths),
            data_class=DATA_CLASS_PROTO.get(facts.data_class, router_pb2.DATA_CLASS_UNSPECIFIED),  # type: ignore[arg-type]
            project_id=facts.project_id,
            agent=facts.agent,
            secret_kinds=list(facts.secret_kinds),
        )
        try:
            reply = await self._stub.Route(request, timeout=_ROUTE_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        if not reply.chain:
            raise Unavailable("the router returned no target", reason="NO_ROUTE")
        report = json_format.MessageToDict(reply.report, preserving_proto_field_name=True)
        return RouteDecision(tuple(reply.chain), report)

    async def reserve(
        self,
        job_id: str,
        attempt: int,
        target: str,
        project_id: str,
        agent: str,
        prompt_tokens: int,
        max_tokens: int,
    ) -> Reservation:
        request = router_pb2.ReserveRequest(
            job_id=job_id,
            attempt=attempt,
            target=target,
            project_id=project_id,
            agent=agent,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
        )
        try:
            reply = await self._stub.Reserve(request, timeout=_ROUTE_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return Reservation(reply.reservation_id, reply.amount, reply.currency)

    async def report_outcome(self, outcome: AttemptOutcome) -> None:
        request = router_pb2.ReportOutcomeRequest(
            job_id=outcome.job_id,
            attempt=outcome.attempt,
            target=outcome.target,
            reservation_id=outcome.reservation_id,
            success=outcome.success,
            cause=outcome.cause,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
        )
        try:
            await self._stub.ReportOutcome(request, timeout=_ROUTE_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None


class GrpcPool:
    """The Pool port over pool-managerd's PoolService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = pool_pb2_grpc.PoolServiceStub(channel)

    async def place(self, job_id: str, model: str, *, time_limit: float) -> WorkerLease:
        try:
            request = pool_pb2.PlaceRequest(job_id=job_id, model=model)
            reply = await self._stub.Place(request, timeout=time_limit)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        lease = reply.lease
        return WorkerLease(
            lease.lease_id, lease.worker_id, lease.address, lease.model or model, lease.context_length
        )

    async def release(self, lease_id: str) -> None:
        try:
            await self._stub.Release(pool_pb2.ReleaseRequest(lease_id=lease_id), timeout=_RELEASE_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None


_FINISH_REASONS = {
    worker_pb2.FINISH_REASON_STOP: "STOP",
    worker_pb2.FINISH_REASON_LENGTH: "LENGTH",
    worker_pb2.FINISH_REASON_ABORTED: "ABORTED",
    worker_pb2.FINISH_REASON_TOOL_CALLS: "TOOL_CALLS",
}
# Worker reasons a job keeps as its own end reason; anything else is ENGINE_ERROR.
_KEPT_REASONS = frozenset(
    {
        "CONTEXT_TOO_LONG",
        "MODEL_NOT_FOUND",
        "MODEL_NOT_LOADED",
        "TOOLS_NOT_SUPPORTED",
        "ENGINE_RESTARTING",
        "UPSTREAM_RATE_LIMITED",
        "UPSTREAM_AUTH_FAILED",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_OVERLOADED",
        "UPSTREAM_TIMEOUT",
        "CLI_EXIT_NONZERO",
        "CLI_TIMEOUT",
    }
)
# Codes meaning the worker (or the connection to it) went away.
_LOST_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})


def worker_error(err: grpc.aio.AioRpcError) -> WorkerError:
    """The WorkerError (and so the job's end reason) for a failed Generate."""
    return _worker_error(err.code(), from_rpc_error(err), err.details() or "")


def _worker_error(code: grpc.StatusCode, typed: HearthError, details: str) -> WorkerError:
    # A live worker's own reason first: an upstream's 5xx travels as
    # UNAVAILABLE (UPSTREAM_UNAVAILABLE) and is no lost worker.
    if typed.reason in _KEPT_REASONS:
        return WorkerError(typed.reason, typed.message)
    if code in _LOST_CODES:
        return WorkerError("WORKER_LOST", f"lost the worker: {details or code.name}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return WorkerError("DEADLINE_EXCEEDED", "the job's deadline passed during generation")
    if typed.reason == "WORKER_BUSY" or code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return WorkerError("WORKER_BUSY", typed.message, retry_after=typed.retry_after)
    return WorkerError("ENGINE_ERROR", typed.message or code.name)


class _SessionLost:
    """Queue marker: the session to the worker ended; carries the error."""

    __slots__ = ("error",)

    def __init__(self, error: WorkerError) -> None:
        self.error = error


_JobQueue = asyncio.Queue[worker_pb2.GenerationUpdate | _SessionLost]


class _WorkerSession:
    """One Session stream to one worker, shared by every job running there.

    A reader task takes each frame and hands each update to its job's queue;
    starts and aborts are written one at a time. When the stream ends (the
    worker died, the connection dropped) every job on it gets WORKER_LOST,
    and the next job opens a new session.
    """

    def __init__(self, stub: worker_pb2_grpc.WorkerServiceStub) -> None:
        self._call = stub.Session()
        self._jobs: dict[str, _JobQueue] = {}
        self._write_lock = asyncio.Lock()
        self.closed = False
        self._reader = asyncio.create_task(self._read(), name="worker-session")

    def register(self, job_id: str) -> _JobQueue:
        queue: _JobQueue = asyncio.Queue()
        self._jobs[job_id] = queue
        return queue

    def unregister(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    async def send(self, request: worker_pb2.SessionRequest) -> None:
        async with self._write_lock:
            await self._call.write(request)

    async def _read(self) -> None:
        lost = WorkerError("WORKER_LOST", "lost the worker: its session ended")
        read, eof, jobs = self._call.read, grpc.aio.EOF, self._jobs
        try:
            while True:
                frame = await read()
                if frame is eof:
                    break
                for update in frame.updates:
                    queue = jobs.get(update.job_id)
                    if queue is not None:
                        queue.put_nowait(update)
        except grpc.aio.AioRpcError as err:
            lost = worker_error(err)
        except asyncio.CancelledError:
            pass
        finally:
            self.closed = True
            for queue in jobs.values():
                queue.put_nowait(_SessionLost(lost))

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        await asyncio.wait([self._reader])


class GrpcWorkers:
    """The Workers port: one cached channel and one Session stream per worker.

    Every generation on a worker shares its session: starts and aborts go
    up, frames of updates of all its jobs come down, so a busy worker costs a
    message per frame, not one per token per job. Worker channels carry no
    tracing interceptor (this is the hottest path there is); the trace
    context travels in each start, so the worker's spans still join the
    job's trace (as children of the dispatcher's "worker.generate" span).

    Args:
        open_channel: makes a channel for an address.
    """

    def __init__(self, open_channel: ChannelFactory) -> None:
        self._open_channel = open_channel
        self._stubs: dict[str, worker_pb2_grpc.WorkerServiceStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._sessions: dict[str, _WorkerSession] = {}
        self._engines: dict[str, str] = {}
        self._aborts: set[asyncio.Task[None]] = set()

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = self._open_channel(address)
            self._channels[address] = channel
            stub = self._stubs[address] = worker_pb2_grpc.WorkerServiceStub(channel)
        return stub

    def _session(self, address: str) -> _WorkerSession:
        session = self._sessions.get(address)
        if session is None or session.closed:
            session = self._sessions[address] = _WorkerSession(self._stub(address))
        return session

    async def generate(
        self, address: str, request: GenerationRequest, *, time_limit: float
    ) -> AsyncIterator[GenerationEvent]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        start = worker_pb2.GenerateRequest(
            job_id=request.job_id,
            model=request.model,
            prompt=request.prompt,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            messages=[chat.message_to_proto(m) for m in request.messages],
            tools=[chat.tool_to_proto(t) for t in request.tools],
            tool_choice=request.tool_choice,
            trace_context=carrier,
        )
        session = self._session(address)
        job_id = request.job_id
        queue = session.register(job_id)
        finished = False
        try:
            try:
                await session.send(worker_pb2.SessionRequest(start=start))
            except grpc.aio.AioRpcError as err:
                raise worker_error(err) from None
            async with asyncio.timeout(time_limit):
                while True:
                    update = await queue.get()
                    if type(update) is _SessionLost:
                        finished = True
                        raise update.error
                    assert isinstance(update, worker_pb2.GenerationUpdate)
                    if update.WhichOneof("update") == "error_status":
                        finished = True
                        typed = from_status(status_pb2.Status.FromString(update.error_status))
                        raise _worker_error(typed.code, typed, typed.message)
                    message = update.event
                    which = message.WhichOneof("event")
                    if which == "tokens":
                        # Model text is made storable here, where it enters, so
                        # what watchers see live is what the journal stores.
                        chunk = message.tokens
                        if chunk.tool_calls:
                            pieces = tuple(
                                _storable_delta(chat.delta_from_proto(d)) for d in chunk.tool_calls
                            )
                            yield TokenChunk(storable(chunk.text), chunk.token_count, pieces)
                        else:
                            yield TokenChunk(storable(chunk.text), chunk.token_count)
                    elif which == "started":
                        yield GenerationStarted(message.started.input_tokens)
                    elif which == "finished":
                        finished = True
                        done = message.finished
                        yield GenerationFinished(
                            _FINISH_REASONS.get(done.finish_reason, "STOP"),
                            done.input_tokens,
                            done.output_tokens,
                            tuple(_storable_call(chat.tool_call_from_proto(c)) for c in done.tool_calls),
                        )
                        return
        except TimeoutError:
            raise WorkerError("DEADLINE_EXCEEDED", "the job's deadline passed during generation") from None
        finally:
            session.unregister(job_id)
            if not finished and not session.closed:
                # Leaving early (a cancel, a deadline) aborts the generation
                # in the worker; sent from a task of its own, as this one may
                # be being cancelled.
                abort = asyncio.create_task(self._abort_in(session, job_id))
                self._aborts.add(abort)
                abort.add_done_callback(self._aborts.discard)

    @staticmethod
    async def _abort_in(session: _WorkerSession, job_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await session.send(worker_pb2.SessionRequest(abort=worker_pb2.AbortRequest(job_id=job_id)))

    async def abort(self, address: str, job_id: str) -> None:
        try:
            await self._stub(address).Abort(
                worker_pb2.AbortRequest(job_id=job_id), timeout=_RELEASE_TIMEOUT, metadata=_trace_metadata()
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    async def engine_of(self, address: str) -> str:
        engine = self._engines.get(address)
        if engine is None:
            try:
                reply = await self._stub(address).GetInfo(
                    worker_pb2.GetInfoRequest(), timeout=_RELEASE_TIMEOUT, metadata=_trace_metadata()
                )
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None
            engine = self._engines[address] = reply.worker.engine
        return engine

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()
        channels, self._channels = self._channels, {}
        self._stubs.clear()
        for channel in channels.values():
            with contextlib.suppress(Exception):
                await channel.close()


# Worker channels: the runtime's keepalive settings, no tracing interceptor
# (see GrpcWorkers), and a small fixed HTTP/2 receive window for token
# streams. With the default (large, auto-growing) window a worker can queue
# thousands of one-token messages in the transport when the orchestrator
# falls behind; with a small one its writes wait, and the worker coalesces
# the tokens that pile up into fewer, larger chunks. Under load that keeps
# the token rate while cutting the per-message work here (measured with 512
# streams on 2 cores: 25 s -> 18 s for the same tokens); idle, it changes
# nothing.
_WORKER_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.http2.lookahead_bytes", 1024),
    ("grpc.http2.bdp_probe", 0),
]


def _storable_delta(delta: chat.ToolCallDelta) -> chat.ToolCallDelta:
    return chat.ToolCallDelta(
        delta.index, storable(delta.id), storable(delta.name), storable(delta.arguments)
    )


def _storable_call(call: chat.ToolCall) -> chat.ToolCall:
    return chat.ToolCall(storable(call.id), storable(call.name), storable(call.arguments))


def open_worker_channel(address: str) -> grpc.aio.Channel:
    """A channel to a worker, tuned for token streams (see above)."""
    return grpc.aio.insecure_channel(address, options=_WORKER_CHANNEL_OPTIONS)


def _trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (W3C traceparent)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


class GrpcMemory:
    """The Memory port over memoryd's MemoryService. With no channel (no
    memory address configured) every call fails with MEMORY_UNAVAILABLE."""

    def __init__(self, channel: grpc.aio.Channel | None) -> None:
        self._stub = memory_pb2_grpc.MemoryServiceStub(channel) if channel is not None else None

    def _require(self) -> memory_pb2_grpc.MemoryServiceStub:
        if self._stub is None:
            raise Unavailable("memoryd is not configured (memory_address)", reason="MEMORY_UNAVAILABLE")
        return self._stub

    async def context(
        self, text: str, project_id: str, task_id: str, token_budget: int, top_k: int, *, time_limit: float
    ) -> list[ContextItem]:
        request = memory_pb2.GetContextRequest(
            project_id=project_id, task_id=task_id, text=text, token_budget=token_budget, top_k=top_k
        )
        try:
            reply = await self._require().GetContext(request, timeout=time_limit)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return [
            ContextItem(_CONTEXT_SECTIONS[item.section], item.memory.memory_id, item.text)
            for item in reply.items
            if item.section in _CONTEXT_SECTIONS
        ]

    async def get(self, project_id: str, memory_id: str, *, time_limit: float) -> str:
        try:
            reply = await self._require().Get(
                memory_pb2.GetRequest(project_id=project_id, memory_id=memory_id), timeout=time_limit
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return reply.memory.text

    async def store_interaction(
        self, interaction: Interaction, request_id: str, *, time_limit: float
    ) -> None:
        memory = memory_pb2.Memory(
            text=interaction.text,
            project_id=interaction.project_id,
            task_id=interaction.task_id,
            kind=memory_pb2.MEMORY_KIND_RAW_INTERACTION,
            source=interaction.source,
            agent=interaction.agent,
            role=interaction.role,
        )
        try:
            await self._require().Store(
                memory_pb2.StoreRequest(memories=[memory], request_id=request_id), timeout=time_limit
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None


_CONTEXT_SECTIONS = {
    memory_pb2.CONTEXT_SECTION_PROJECT_SUMMARY: ContextSection.PROJECT_SUMMARY,
    memory_pb2.CONTEXT_SECTION_TASK_SUMMARY: ContextSection.TASK_SUMMARY,
    memory_pb2.CONTEXT_SECTION_RETRIEVED: ContextSection.RETRIEVED,
}


async def close_channels(*channels: grpc.aio.Channel | None) -> None:
    for channel in channels:
        if channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 2.0)
