"""hearth.api.pool.v1.PoolService over the PoolView: validate, convert, call
one pool method (and, for model and drain commands, the worker), convert back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from opentelemetry import trace
from prometheus_client import Gauge

from hearth.api.pool.v1 import pool_pb2, pool_pb2_grpc
from hearth.api.worker.v1 import worker_pb2
from hearth.errors import HearthError, InvalidArgument
from hearth.runtime import JOB_ID_ATTRIBUTE, ServiceMetrics
from pool_managerd.adapters.heartbeats import WIRE_MODEL_STATES
from pool_managerd.api.page_tokens import decode_page_token, encode_page_token
from pool_managerd.domain.pool import (
    ChangeKind,
    LoadOrder,
    ModelLoading,
    PoolChange,
    PoolChangeSink,
    PooledWorker,
    PoolView,
    WorkerControl,
    WorkerLease,
    WorkerModel,
    WorkerState,
)

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

#: Span attributes of a placement, besides the job id.
WORKER_ID_ATTRIBUTE = "hearth.worker_id"
MODEL_ATTRIBUTE = "hearth.model"
LEASE_ID_ATTRIBUTE = "hearth.lease_id"

# Placement outcomes by error reason; anything else counts as "error", which
# keeps the metric's label set bounded.
_RESULTS = (
    "placed",
    "model_not_found",
    "no_capacity",
    "model_loading",
    "model_load_failed",
    "pool_warming_up",
    "invalid_field",
    "error",
)

_WIRE_STATES = {
    WorkerState.UNKNOWN: worker_pb2.WORKER_STATE_UNSPECIFIED,
    WorkerState.STARTING: worker_pb2.WORKER_STATE_STARTING,
    WorkerState.READY: worker_pb2.WORKER_STATE_READY,
    WorkerState.DRAINING: worker_pb2.WORKER_STATE_DRAINING,
}


class PoolServicer(pool_pb2_grpc.PoolServiceServicer):
    """The PoolService RPCs.

    Place answers MODEL_LOADING when it ordered a load (or one is under way):
    the order goes to ``begin_load``, which carries it out in the background.
    LoadModel, UnloadModel and Drain call the worker through ``workers``.

    Args:
        pool: the pool, shared with the heartbeat listener (same event loop).
        changes: where a Drain's DRAINING notice goes.
        workers: commands to workers.
        begin_load: starts carrying out a load ordered by placement.
        tracer: for the Place span.
        metrics: registers hearth_pool_manager_workers and
            hearth_pool_manager_placements_total{result} on its registry.
        clock: the monotonic clock the pool's ``now`` comes from.
        wall_clock: for the timestamps in responses.
    """

    def __init__(
        self,
        pool: PoolView,
        changes: PoolChangeSink,
        *,
        workers: WorkerControl,
        begin_load: Callable[[LoadOrder], None],
        tracer: trace.Tracer,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._changes = changes
        self._workers = workers
        self._begin_load = begin_load
        self._tracer = tracer
        self._clock = clock
        self._wall_clock = wall_clock
        workers_gauge = Gauge(
            f"hearth_{metrics.service}_workers",
            "Workers in the pool (heartbeat within the TTL).",
            registry=metrics.registry,
        )
        # Read at scrape time, from the metrics thread: len() of a dict is atomic.
        workers_gauge.set_function(lambda: len(pool))
        placements = metrics.counter("placements_total", "Place calls, by result.", ["result"])
        self._placements = {result: placements.labels(result) for result in _RESULTS}

    async def Place(
        self, request: pool_pb2.PlaceRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.PlaceResponse:
        with self._tracer.start_as_current_span(
            "pool.place", attributes={JOB_ID_ATTRIBUTE: request.job_id, MODEL_ATTRIBUTE: request.model}
        ) as span:
            try:
                _require(request.job_id, "job_id")
                _require(request.model, "model")
                lease = self._pool.place(request.job_id, request.model, self._clock())
            except ModelLoading as loading:
                if loading.order is not None:
                    span.set_attribute("hearth.load_ordered", True)
                    self._begin_load(loading.order)
                span.set_attribute(WORKER_ID_ATTRIBUTE, loading.metadata["worker_id"])
                self._placements["model_loading"].inc()
                raise
            except HearthError as err:
                self._placements.get(err.reason.lower(), self._placements["error"]).inc()
                raise
            span.set_attribute(WORKER_ID_ATTRIBUTE, lease.worker_id)
            span.set_attribute(LEASE_ID_ATTRIBUTE, lease.lease_id)
            self._placements["placed"].inc()
            return pool_pb2.PlaceResponse(lease=_lease_message(lease, self._wall_clock()))

    async def Release(
        self, request: pool_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.ReleaseResponse:
        _require(request.lease_id, "lease_id")
        return pool_pb2.ReleaseResponse(released=self._pool.release(request.lease_id))

    async def ListWorkers(
        self, request: pool_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.ListWorkersResponse:
        if request.page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(request.page_token)
        workers, following = self._pool.workers_page(after, size)
        now, wall_now = self._clock(), self._wall_clock()
        return pool_pb2.ListWorkersResponse(
            workers=[_worker_message(w, now, wall_now) for w in workers],
            next_page_token=encode_page_token(following) if following is not None else "",
        )

    async def Drain(
        self, request: pool_pb2.DrainRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.DrainResponse:
        _require(request.worker_id, "worker_id")
        result = self._pool.drain(request.worker_id)
        if result.changed:
            await self._changes.publish(PoolChange(request.worker_id, ChangeKind.DRAINING))
        try:
            await self._workers.drain(result.worker.snapshot.address)
        except HearthError as err:
            # The pool places nothing there any more either way; a worker that
            # cannot be told is most likely on its way out.
            log.warning(
                "worker %s not told to drain: %s",
                request.worker_id,
                err,
                extra={"worker_id": request.worker_id},
            )
        return pool_pb2.DrainResponse(
            worker=_worker_message(result.worker, self._clock(), self._wall_clock())
        )

    async def LoadModel(
        self, request: pool_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.LoadModelResponse:
        _require(request.model, "model")
        order = self._pool.choose_load(request.model, request.worker_id, self._clock())
        model: WorkerModel | None = None
        error: str | None = None
        try:
            model = await self._workers.load_model(order.address, order.model)
        except HearthError as err:
            error = err.message or err.reason
            raise
        except asyncio.CancelledError:
            raise
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            raise
        finally:
            self._pool.load_finished(order, self._clock(), model=model, error=error)
        return pool_pb2.LoadModelResponse(worker=self._worker_message(order.worker_id))

    async def UnloadModel(
        self, request: pool_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.UnloadModelResponse:
        _require(request.model, "model")
        worker = self._pool.choose_unload(request.model, request.worker_id)
        model = await self._workers.unload_model(worker.snapshot.address, request.model, force=request.force)
        self._pool.set_model(worker.worker_id, request.model, model)
        return pool_pb2.UnloadModelResponse(worker=self._worker_message(worker.worker_id))

    def _worker_message(self, worker_id: str) -> pool_pb2.PooledWorker:
        return _worker_message(self._pool.worker(worker_id), self._clock(), self._wall_clock())


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")


def _lease_message(lease: WorkerLease, wall_now: float) -> pool_pb2.WorkerLease:
    return pool_pb2.WorkerLease(
        lease_id=lease.lease_id,
        job_id=lease.job_id,
        worker_id=lease.worker_id,
        address=lease.address,
        model=lease.model,
        context_length=lease.context_length,
        create_time=_timestamp(wall_now),
    )


def _worker_message(worker: PooledWorker, now: float, wall_now: float) -> pool_pb2.PooledWorker:
    info = worker_pb2.WorkerInfo()
    snapshot = worker.snapshot
    if isinstance(snapshot.source, worker_pb2.WorkerInfo):
        info.CopyFrom(snapshot.source)
    else:
        info.worker_id = snapshot.worker_id
        info.address = snapshot.address
        info.engine = snapshot.engine
        info.max_concurrency = snapshot.max_concurrency
        info.models.extend(
            worker_pb2.ModelInfo(name=name, context_length=model.context_length)
            for name, model in snapshot.models.items()
        )
    # The pool's word wins: a drained worker shows DRAINING even while it reports READY,
    # and a model shows the state its load or unload answered before a heartbeat says so.
    info.state = _WIRE_STATES[worker.state]
    for model_info in info.models:
        model = snapshot.models.get(model_info.name)
        if model is not None:
            model_info.state = WIRE_MODEL_STATES[model.state]
    age = worker.heartbeat_age(now)
    heartbeat_age = duration_pb2.Duration()
    heartbeat_age.FromNanoseconds(int(age * 1e9))
    return pool_pb2.PooledWorker(
        info=info,
        leased=worker.leased,
        last_heartbeat_time=_timestamp(wall_now - age),
        heartbeat_age=heartbeat_age,
    )


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
