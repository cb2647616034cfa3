"""The hearth.api.worker.v1.WorkerService servicer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from hearth.api.worker.v1 import worker_pb2, worker_pb2_grpc
from hearth.errors import HearthError, Internal, InvalidArgument
from hearth.runtime import JOB_ID_ATTRIBUTE
from workerd.adapters.metrics import WorkerMetrics
from workerd.api import convert
from workerd.domain.engine import (
    Engine,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    TokenDelta,
)
from workerd.domain.generation import validate_generation
from workerd.domain.model_set import ModelSet
from workerd.domain.worker_status import GpuStatus, WorkerStatus

log = logging.getLogger(__name__)


class _EngineDone:
    """Queue marker: the engine's iterator ended."""


_ENGINE_DONE = _EngineDone()
_Relayed = GenerationEvent | BaseException | _EngineDone


def _never() -> bool:
    return False


class _Session:
    """The generations of one Session stream and the frames it sends.

    Each generation runs in a task of its own and appends its messages to
    the pending list; :meth:`frames` sends everything pending as one frame
    whenever the stream can take one, so an idle session answers at once
    and a busy one batches. A generation's error becomes its last update.
    """

    def __init__(self, servicer: WorkerServicer) -> None:
        self._servicer = servicer
        self._pending: list[worker_pb2.GenerationUpdate] = []
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._reading = True

    async def read(self, requests: AsyncIterator[worker_pb2.SessionRequest]) -> None:
        try:
            async for request in requests:
                if request.HasField("start"):
                    start = request.start
                    if start.job_id in self._running:
                        continue  # a repeated start of a running job: the first one stands
                    task = asyncio.create_task(self._run(start), name=f"session-{start.job_id}")
                    self._running[start.job_id] = task
                elif request.HasField("abort"):
                    running = self._running.get(request.abort.job_id)
                    if running is not None:
                        running.cancel()
        finally:
            self._reading = False
            self._wake.set()

    async def _run(self, request: worker_pb2.GenerateRequest) -> None:
        job_id = request.job_id
        parent = propagate.extract(dict(request.trace_context)) if request.trace_context else None
        pending, wake = self._pending, self._wake  # the same list for the session's whole life
        try:
            generation = convert.generation_request(request)
            async for message in self._servicer._generation(generation, parent, _never):
                pending.append(worker_pb2.GenerationUpdate(job_id=job_id, event=message))
                wake.set()
        except asyncio.CancelledError:
            return  # aborted: the orchestrator asked, or the session closed
        except Exception as err:
            if not isinstance(err, HearthError):
                log.exception("generation %s failed", job_id)
                err = Internal("internal error; see the worker's log")
            status = err.to_status().SerializeToString()
            pending.append(worker_pb2.GenerationUpdate(job_id=job_id, error_status=status))
            wake.set()
        finally:
            self._running.pop(job_id, None)
            if not self._reading:
                wake.set()

    async def frames(self) -> AsyncIterator[worker_pb2.SessionResponse]:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                frame = worker_pb2.SessionResponse(updates=self._pending)
                self._pending.clear()
                yield frame
            if not self._reading and not self._running and not self._pending:
                return

    async def close(self) -> None:
        """Abort every generation still running (the stream is gone)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Serves the worker's models over gRPC.

    Generate validates the request, takes a concurrency slot from the
    :class:`WorkerStatus`, marks the generation running on its model in the
    :class:`ModelSet` (refused with MODEL_NOT_LOADED when the model is not
    loaded) and relays the engine's events: the engine's iterator runs in a
    task of its own feeding a queue, so that token deltas that pile up while
    the client is slow go out as one TokenChunk. A client that cancels the
    call aborts the generation in the engine. LoadModel, UnloadModel and Drain
    change the worker's models and state; Drain announces it at once.

    Args:
        models: the worker's models and their engines.
        status: the worker's state, admission and counters.
        engine_kind: the engine kind, as reported.
        metrics: the worker's Prometheus metrics.
        tracer: the service's tracer (one span per Generate).
        address: the advertised host:port (known once the server is bound).
        read_gpu: the GPU as of now.
        announce: publishes a heartbeat now (after Drain).
    """

    def __init__(
        self,
        models: ModelSet,
        status: WorkerStatus,
        *,
        engine_kind: str,
        metrics: WorkerMetrics,
        tracer: trace.Tracer,
        address: Callable[[], str],
        read_gpu: Callable[[], GpuStatus],
        announce: Callable[[], Awaitable[None]],
    ) -> None:
        self._models = models
        self._status = status
        self._engine_kind = engine_kind
        self._metrics = metrics
        self._tracer = tracer
        self._address = address
        self._read_gpu = read_gpu
        self._announce = announce

    def describe(self) -> worker_pb2.WorkerInfo:
        """The worker as GetInfo and heartbeats report it: every loadable
        model with its state, and the engines' load summed."""
        info = convert.worker_info(
            self._status,
            engine_kind=self._engine_kind,
            models=self._models.describe(),
            load=self._models.stats(),
            address=self._address(),
            gpu=self._read_gpu(),
        )
        self._metrics.observe_info(info)
        return info

    async def GetInfo(
        self, request: worker_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetInfoResponse:
        return worker_pb2.GetInfoResponse(worker=self.describe())

    async def Abort(
        self, request: worker_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.AbortResponse:
        if not request.job_id:
            raise InvalidArgument("job_id", "must not be empty")
        aborted = await self._models.abort(request.job_id)
        if aborted:
            log.info("aborted job %s on request", request.job_id, extra={"job_id": request.job_id})
        return worker_pb2.AbortResponse(aborted=aborted)

    async def LoadModel(
        self, request: worker_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.LoadModelResponse:
        if not request.model:
            raise InvalidArgument("model", "is required")
        self._status.check_loads_allowed()
        status = await self._models.load(request.model)
        return worker_pb2.LoadModelResponse(model=convert.model_info(status))

    async def UnloadModel(
        self, request: worker_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.UnloadModelResponse:
        if not request.model:
            raise InvalidArgument("model", "is required")
        status = await self._models.unload(request.model, force=request.force)
        return worker_pb2.UnloadModelResponse(model=convert.model_info(status))

    async def Drain(
        self, request: worker_pb2.DrainRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.DrainResponse:
        if self._status.state != "draining":
            log.info("draining: running generations finish, new ones are refused")
        self._status.mark_draining()
        await self._announce()
        return worker_pb2.DrainResponse(worker=self.describe())

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        generation = convert.generation_request(request)
        async for message in self._generation(generation, None, context.cancelled):
            yield message

    async def Session(
        self,
        request_iterator: AsyncIterator[worker_pb2.SessionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[worker_pb2.SessionResponse]:
        session = _Session(self)
        reader = asyncio.create_task(session.read(request_iterator), name="session-reader")
        try:
            async for frame in session.frames():
                yield frame
        finally:
            reader.cancel()
            await session.close()
            await asyncio.wait([reader])

    async def _generation(
        self,
        generation: GenerationRequest,
        parent: otel_context.Context | None,
        cancelled: Callable[[], bool],
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        """One generation's messages, as Generate streams them (one span;
        errors raised as they are, for the caller to map)."""
        # In a Session the generation is the server side of the job's call
        # (the stream itself has no span): a SERVER span under the caller's.
        span = self._tracer.start_span(
            "workerd.generate",
            context=parent,
            kind=SpanKind.SERVER if parent is not None else SpanKind.INTERNAL,
            attributes={
                JOB_ID_ATTRIBUTE: generation.job_id,
                "hearth.model": generation.model,
                "hearth.max_tokens": generation.max_tokens,
            },
        )
        try:
            validate_generation(generation, self._models.served_models())
            # aclosing: when this generator is closed, the relay is closed (and the
            # engine aborted) before the model and the concurrency slot are given back.
            with (
                self._status.admit(generation.job_id),
                self._models.generation(generation.model, generation.job_id) as engine,
            ):
                async with contextlib.aclosing(self._relay(engine, generation, span, cancelled)) as relay:
                    async for message in relay:
                        yield message
        except (asyncio.CancelledError, GeneratorExit):
            span.set_attribute("hearth.finish_reason", "aborted")
            span.set_attribute("hearth.client_cancelled", True)
            raise
        except Exception as err:
            span.record_exception(err)
            span.set_status(Status(StatusCode.ERROR, type(err).__name__))
            raise
        finally:
            span.end()

    async def _relay(
        self, engine: Engine, generation: GenerationRequest, span: Span, cancelled: Callable[[], bool]
    ) -> AsyncGenerator[worker_pb2.GenerateResponse, None]:
        received = time.perf_counter()
        queue: asyncio.Queue[_Relayed] = asyncio.Queue()
        # The engine's spans (if any) are children of this Generate's span.
        with trace.use_span(span, end_on_exit=False):
            pump = asyncio.create_task(
                self._pump(engine, generation, queue), name=f"generate-{generation.job_id}"
            )
        self._metrics.running.inc()
        outcome = "error"
        first_token = True
        first_token_at = last_token_at = 0.0
        later_tokens = 0
        held: _Relayed | None = None
        try:
            while True:
                event = held if held is not None else await queue.get()
                held = None
                if isinstance(event, _EngineDone):
                    return
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, GenerationStarted):
                    span.set_attribute("hearth.input_tokens", event.input_tokens)
                    yield convert.started_message(event)
                elif isinstance(event, TokenDelta):
                    deltas = [event]
                    while not queue.empty():
                        waiting = queue.get_nowait()
                        if not isinstance(waiting, TokenDelta):
                            held = waiting
                            break
                        deltas.append(waiting)
                    text, count, tool_calls = convert.merge_deltas(deltas)
                    last_token_at = time.perf_counter()
                    if first_token:
                        first_token = False
                        first_token_at = last_token_at
                        self._metrics.time_to_first_token.observe(first_token_at - received)
                    else:
                        later_tokens += count
                    self._metrics.generated_tokens.inc(count)
                    self._status.record_tokens(count)
                    yield convert.tokens_message(text, count, tool_calls)
                elif isinstance(event, GenerationFinished):
                    outcome = event.finish_reason
                    # As the run record counts it: tokens after the first chunk over the time
                    # from the first to the last token.
                    span_seconds = last_token_at - first_token_at
                    if later_tokens > 0 and span_seconds > 0:
                        self._metrics.decode_rate.observe(later_tokens / span_seconds)
                    self._status.record_finish(event.finish_reason)
                    span.set_attribute("hearth.output_tokens", event.output_tokens)
                    span.set_attribute("hearth.finish_reason", event.finish_reason)
                    yield convert.finished_message(event)
                if cancelled():
                    raise asyncio.CancelledError("the client cancelled the call")
        except (asyncio.CancelledError, GeneratorExit):
            # A cancelled call either cancels this task (CancelledError) or, when
            # it is cancelled while grpc sends a message, leaves this generator
            # to be closed later (GeneratorExit). Both mean the client is gone.
            if outcome == "error":  # not finished yet
                outcome = "aborted"
                self._status.record_finish("aborted")
            # The client went away: stop the engine's work for it now.
            await engine.abort(generation.job_id)
            raise
        finally:
            pump.cancel()
            # wait() rather than await: a cancellation of this task still propagates.
            await asyncio.wait([pump])
            self._metrics.running.dec()
            self._metrics.requests.labels(outcome).inc()

    @staticmethod
    async def _pump(engine: Engine, generation: GenerationRequest, queue: asyncio.Queue[_Relayed]) -> None:
        try:
            async for event in engine.generate(generation):
                queue.put_nowait(event)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # relayed to the RPC, where the interceptor maps it
            queue.put_nowait(err)
        else:
            queue.put_nowait(_ENGINE_DONE)
