"""hearth.api.pool.v1.PoolService over the PoolView: validate, convert, call
one pool method, convert back."""

from __future__ import annotations

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
from pool_managerd.api.page_tokens import decode_page_token, encode_page_token
from pool_managerd.domain.pool import (
    ChangeKind,
    PoolChange,
    PoolChangeSink,
    PooledWorker,
    PoolView,
    WorkerLease,
    WorkerState,
)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

#: Span attributes of a placement, besides the job id.
WORKER_ID_ATTRIBUTE = "hearth.worker_id"
MODEL_ATTRIBUTE = "hearth.model"
LEASE_ID_ATTRIBUTE = "hearth.lease_id"

# Placement outcomes by error reason; anything else counts as "error", which
# keeps the metric's label set bounded.
_RESULTS = ("placed", "model_not_found", "no_capacity", "pool_warming_up", "invalid_field", "error")

_WIRE_STATES = {
    WorkerState.UNKNOWN: worker_pb2.WORKER_STATE_UNSPECIFIED,
    WorkerState.STARTING: worker_pb2.WORKER_STATE_STARTING,
    WorkerState.READY: worker_pb2.WORKER_STATE_READY,
    WorkerState.DRAINING: worker_pb2.WORKER_STATE_DRAINING,
}


class PoolServicer(pool_pb2_grpc.PoolServiceServicer):
    """The PoolService RPCs.

    Args:
        pool: the pool, shared with the heartbeat listener (same event loop).
        changes: where a Drain's DRAINING notice goes.
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
        tracer: trace.Tracer,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._changes = changes
        self._tracer = tracer
        self._clock = clock
        self._wall_clock = wall_clock
        workers = Gauge(
            f"hearth_{metrics.service}_workers",
            "Workers in the pool (heartbeat within the TTL).",
            registry=metrics.registry,
        )
        # Read at scrape time, from the metrics thread: len() of a dict is atomic.
        workers.set_function(lambda: len(pool))
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
        return pool_pb2.DrainResponse(
            worker=_worker_message(result.worker, self._clock(), self._wall_clock())
        )


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
            worker_pb2.ModelInfo(name=name, context_length=length) for name, length in snapshot.models.items()
        )
    # The pool's word wins: a drained worker shows DRAINING even while it reports READY.
    info.state = _WIRE_STATES[worker.state]
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
