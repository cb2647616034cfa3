"""The pool: a pure, in-memory view of live workers and the leases on them.

:class:`PoolView` is fed worker snapshots (from heartbeats), drops workers
whose heartbeats stop, and places jobs: it picks a live, ready worker that
has the model loaded and a free slot, least loaded first, and hands out a
:class:`WorkerLease` on that slot until it is released. When no worker has
the model loaded but one can load it, placement orders a load
(:class:`LoadOrder`, carried by :class:`ModelLoading`) for the caller to
carry out, and remembers it until :meth:`PoolView.load_finished`.

It does no I/O and reads no clock: every method that depends on time takes
``now``, seconds on one monotonic clock chosen by the caller. It is not
thread-safe; the service uses it from one asyncio loop. A test can drive it
with plain numbers and thousands of fake workers.
"""

from __future__ import annotations

import bisect
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import NamedTuple, Protocol

from hearth.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable

#: How long a caller should wait before retrying a placement that found every
#: suitable worker full.
NO_CAPACITY_RETRY_SECONDS = 0.2
#: Longest retry delay of MODEL_LOADING: a caller checks again at least this often.
MODEL_LOADING_MAX_RETRY_SECONDS = 1.0
#: Shortest retry delay of MODEL_LOADING (a load about to end).
MODEL_LOADING_MIN_RETRY_SECONDS = 0.1


class WorkerState(enum.Enum):
    """A worker's lifecycle state as it reports it."""

    UNKNOWN = "unknown"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class ModelState(enum.Enum):
    """A model's state on a worker, as the worker reports it."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class WorkerModel:
    """One model of a worker: served (LOADED) or loadable.

    Attributes:
        context_length: prompt plus completion, in tokens.
        state: where it stands on that worker.
        load_estimate_seconds: how long a load there is expected to take.
        error: why the last load failed (state FAILED).
    """

    context_length: int
    state: ModelState = ModelState.LOADED
    load_estimate_seconds: float = 0.0
    error: str = ""


class ChangeKind(enum.Enum):
    """What a heartbeat, an expiry or a drain did to the pool."""

    JOINED = "joined"
    UPDATED = "updated"
    DRAINING = "draining"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """A worker as its latest heartbeat describes it.

    Attributes:
        worker_id: stable id of the worker; the pool's key.
        address: host:port of its WorkerService.
        models: each model it serves or can load, by name.
        state: its lifecycle state as it reports it.
        max_concurrency: most generations it runs at once; the pool leases at most
            this many slots on it.
        engine: the engine kind, for listings.
        gpu_free_bytes: free memory of its GPU (0: no GPU, or unknown); a load
            goes to the worker with the most.
        source: the heartbeat's own description of the worker, carried untouched so
            that listings can show every detail; the pool never reads it.
    """

    worker_id: str
    address: str
    models: Mapping[str, WorkerModel]
    state: WorkerState
    max_concurrency: int
    engine: str = ""
    gpu_free_bytes: int = 0
    source: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class WorkerLease:
    """A claim on one generation slot of one worker, held from place() until
    release() or until the worker is dropped."""

    lease_id: str
    job_id: str
    worker_id: str
    address: str
    model: str
    #: The model's context length on that worker, in tokens.
    context_length: int
    #: The ``now`` of the placement.
    placed_at: float


@dataclass(frozen=True, slots=True)
class PooledWorker:
    """A worker as the pool sees it: its latest snapshot plus the pool's own
    bookkeeping."""

    snapshot: WorkerSnapshot
    #: Leases held on it now.
    leased: int
    #: The ``now`` of its latest heartbeat.
    last_heartbeat: float
    #: True when Drain was called on it (the pool stops placing there even if
    #: the worker still reports READY).
    drained: bool

    @property
    def worker_id(self) -> str:
        return self.snapshot.worker_id

    @property
    def state(self) -> WorkerState:
        """The state placement acts on: DRAINING once drained, else as reported."""
        return WorkerState.DRAINING if self.drained else self.snapshot.state

    def heartbeat_age(self, now: float) -> float:
        return max(0.0, now - self.last_heartbeat)


@dataclass(frozen=True, slots=True)
class PoolChange:
    """A change worth telling others about (joined, draining, left)."""

    worker_id: str
    kind: ChangeKind


@dataclass(frozen=True, slots=True)
class LoadOrder:
    """A load of ``model`` on one worker that the pool asked for (or is
    about to): in flight from the order until :meth:`PoolView.load_finished`."""

    worker_id: str
    address: str
    model: str
    #: The worker's estimate of the load's duration, in seconds.
    estimate_seconds: float
    #: The ``now`` of the order.
    ordered_at: float


class ModelLoading(Unavailable):
    """Placement found no worker with the model loaded, and a load is under
    way (reason MODEL_LOADING, retryable: metadata model, worker_id and
    estimate_seconds; retry after min(estimate, 1 s)).

    ``order`` is the load this placement ordered, which the caller must carry
    out; None when the load was already under way.
    """

    def __init__(self, model: str, worker_id: str, estimate_seconds: float, order: LoadOrder | None) -> None:
        estimate = max(0.0, estimate_seconds)
        retry = min(max(estimate, MODEL_LOADING_MIN_RETRY_SECONDS), MODEL_LOADING_MAX_RETRY_SECONDS)
        super().__init__(
            f"model {model!r} is loading on worker {worker_id} (about {estimate:.1f} s); retry shortly",
            reason="MODEL_LOADING",
            metadata={"model": model, "worker_id": worker_id, "estimate_seconds": f"{estimate:.1f}"},
            retry_after=round(retry, 3),
        )
        self.order = order


class WorkerControl(Protocol):
    """Commands to one worker (gRPC in the service, a fake in tests).

    Each raises the worker's own error (a HearthError: MODEL_NOT_FOUND,
    INSUFFICIENT_VRAM, ENGINE_ERROR, ...), or Unavailable (WORKER_UNREACHABLE)
    when the worker cannot be reached.
    """

    async def load_model(self, address: str, model: str) -> WorkerModel:
        """Load ``model`` and return once it serves: its state afterwards."""
        ...

    async def unload_model(self, address: str, model: str, *, force: bool) -> WorkerModel:
        """Unload ``model``: its state afterwards."""
        ...

    async def drain(self, address: str) -> None:
        """Tell the worker to take no new generations."""
        ...


class PoolChangeSink(Protocol):
    """Where pool changes go (NATS in the service, a list in tests).
    ``publish`` must not raise for delivery failures: the pool has already
    changed and a lost notice must not undo or fail the caller."""

    async def publish(self, change: PoolChange) -> None: ...


class DrainResult(NamedTuple):
    worker: PooledWorker
    #: False when the worker was already draining (a repeated Drain).
    changed: bool


class _LoadFailure(NamedTuple):
    error: str
    #: The ``now`` the failure was learnt.
    at: float


class _Entry:
    """The pool's mutable record of one worker."""

    __slots__ = ("drained", "last_seen", "lease_ids", "load_failures", "loads", "snapshot")

    def __init__(self, snapshot: WorkerSnapshot, now: float) -> None:
        self.snapshot = snapshot
        self.last_seen = now
        self.lease_ids: set[str] = set()
        self.drained = False
        #: Loads in flight that the pool ordered, by model.
        self.loads: dict[str, LoadOrder] = {}
        #: The latest failed load of each model, until one succeeds.
        self.load_failures: dict[str, _LoadFailure] = {}

    @property
    def draining(self) -> bool:
        return self.drained or self.snapshot.state is WorkerState.DRAINING

    @property
    def takes_work(self) -> bool:
        """Ready and not draining: placement and loads may go here."""
        return not self.drained and self.snapshot.state is WorkerState.READY

    def load_ratio(self) -> Fraction:
        return Fraction(len(self.lease_ids), self.snapshot.max_concurrency)

    def recently_failed(self, model: str, now: float, retry_seconds: float) -> _LoadFailure | None:
        failure = self.load_failures.get(model)
        if failure is not None and now - failure.at < retry_seconds:
            return failure
        return None

    def set_model(self, name: str, model: WorkerModel) -> None:
        self.snapshot = replace(self.snapshot, models={**self.snapshot.models, name: model})

    def view(self) -> PooledWorker:
        return PooledWorker(self.snapshot, len(self.lease_ids), self.last_seen, self.drained)


class PoolView:
    """Live workers and their leases.

    Args:
        heartbeat_ttl_seconds: a worker whose latest heartbeat is older than this
            is not live: place() skips it and expire() drops it.
        load_retry_seconds: after a failed load of a model on a worker,
            placement does not order another there for this long (and says
            MODEL_LOAD_FAILED when nothing else can serve the model).

    Invariants: a lease belongs to exactly one tracked worker; dropping a worker
    forgets its leases, its loads in flight and its failures; a worker never
    holds more leases than its max_concurrency through place() (a shrinking
    max_concurrency can leave it over, and it then gets no new ones until
    leases are released); placement orders at most one load per (worker,
    model) at a time.
    """

    def __init__(self, heartbeat_ttl_seconds: float = 2.0, *, load_retry_seconds: float = 30.0) -> None:
        if heartbeat_ttl_seconds <= 0:
            raise ValueError("heartbeat_ttl_seconds must be positive")
        if load_retry_seconds < 0:
            raise ValueError("load_retry_seconds must not be negative")
        self.heartbeat_ttl_seconds = heartbeat_ttl_seconds
        self.load_retry_seconds = load_retry_seconds
        self._warm_at = float("-inf")
        self._entries: dict[str, _Entry] = {}
        self._leases: dict[str, WorkerLease] = {}

    def __len__(self) -> int:
        """How many workers the pool tracks."""
        return len(self._entries)

    def begin_listening(self, now: float) -> None:
        """Heartbeats start arriving at ``now``. For one TTL after it the pool
        may not have heard from every worker yet, so a placement that finds no
        worker for the model raises Unavailable(POOL_WARMING_UP, retryable)
        instead of MODEL_NOT_FOUND, which a caller would take as final (as it
        would after a pool-managerd restart)."""
        self._warm_at = now + self.heartbeat_ttl_seconds

    def observe(self, snapshot: WorkerSnapshot, now: float) -> ChangeKind:
        """Record a heartbeat. Returns JOINED for a worker not tracked before,
        DRAINING when this heartbeat turned it draining, else UPDATED. A drain
        ordered through drain() outlives later heartbeats. A model reported
        FAILED counts as a failed load from the first heartbeat that says so;
        one reported LOADED clears its failure."""
        entry = self._entries.get(snapshot.worker_id)
        if entry is None:
            entry = self._entries[snapshot.worker_id] = _Entry(snapshot, now)
            self._note_failures(entry, now)
            return ChangeKind.JOINED
        was_draining = entry.draining
        entry.snapshot = snapshot
        entry.last_seen = now
        self._note_failures(entry, now)
        if entry.draining and not was_draining:
            return ChangeKind.DRAINING
        return ChangeKind.UPDATED

    def expire(self, now: float) -> list[str]:
        """Drop every worker whose latest heartbeat is older than the TTL, with
        its leases. Returns the dropped worker ids, sorted."""
        cutoff = now - self.heartbeat_ttl_seconds
        dropped = sorted(wid for wid, entry in self._entries.items() if entry.last_seen < cutoff)
        for worker_id in dropped:
            entry = self._entries.pop(worker_id)
            for lease_id in entry.lease_ids:
                del self._leases[lease_id]
        return dropped

    def place(self, job_id: str, model: str, now: float) -> WorkerLease:
        """Lease a slot for ``job_id`` on the least loaded live, READY worker
        that has ``model`` loaded and a free slot (load = leases held /
        max_concurrency; ties go to the smaller worker id).

        When no such worker has it loaded: if a load is under way on a live
        worker, ModelLoading without an order; else if a live READY worker
        lists it loadable (unloaded, unloading, or failed longer than
        ``load_retry_seconds`` ago), ModelLoading with a :class:`LoadOrder` for
        the one with the most free GPU memory, then the least loaded, then
        the smallest id, which the caller must carry out.

        Raises:
            ModelLoading: MODEL_LOADING (Unavailable, retryable), see above.
            ResourceExhausted: NO_CAPACITY, every live worker with the model
                loaded is full, starting or draining (and none can load it);
                retry after a short delay.
            FailedPrecondition: MODEL_LOAD_FAILED, the model's last load failed
                on every live worker that could take it (metadata: model,
                worker_id, error).
            Unavailable: POOL_WARMING_UP, see begin_listening().
            NotFound: MODEL_NOT_FOUND, no live worker serves or can load the model.
        """
        # One pass, no allocation until the lease: this runs for every job.
        cutoff = now - self.heartbeat_ttl_seconds
        best: _Entry | None = None
        best_context = 0
        served = 0
        ready = 0
        for entry in self._entries.values():
            snapshot = entry.snapshot
            served_model = snapshot.models.get(model)
            if (
                served_model is None
                or served_model.state is not ModelState.LOADED
                or entry.last_seen < cutoff
            ):
                continue
            served += 1
            if entry.drained or snapshot.state is not WorkerState.READY:
                continue
            ready += 1
            leased = len(entry.lease_ids)
            capacity = snapshot.max_concurrency
            if leased >= capacity:
                continue
            if best is not None:
                # Compare leased/capacity exactly, without floats.
                mine = leased * best.snapshot.max_concurrency
                theirs = len(best.lease_ids) * capacity
                if mine > theirs or (mine == theirs and snapshot.worker_id > best.snapshot.worker_id):
                    continue
            best, best_context = entry, served_model.context_length
        if best is None:
            if ready:
                raise self._no_capacity(model, served)
            starting = self._order_load(model, now)
            if served or starting:
                raise self._no_capacity(model, served + starting)
            if now < self._warm_at:
                raise Unavailable(
                    "the pool has only just started listening for workers; retry shortly",
                    reason="POOL_WARMING_UP",
                    metadata={"model": model},
                    retry_after=round(self._warm_at - now, 3),
                )
            raise NotFound(
                f"no live worker serves or can load model {model!r}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": model},
            )
        snapshot = best.snapshot
        lease = WorkerLease(
            str(uuid.uuid4()), job_id, snapshot.worker_id, snapshot.address, model, best_context, now
        )
        best.lease_ids.add(lease.lease_id)
        self._leases[lease.lease_id] = lease
        return lease

    def choose_load(self, model: str, worker_id: str, now: float) -> LoadOrder:
        """The load a LoadModel request asks for, now in flight: on
        ``worker_id``, or when empty on the pool's choice among live READY
        workers that list the model (one with it loaded, else one loading it,
        else the one with the most free GPU memory, then the least loaded).
        Unlike placement it ignores earlier failures: an explicit load retries.

        Raises:
            NotFound: WORKER_NOT_FOUND (an unknown worker_id), MODEL_NOT_FOUND
                (the worker does not list the model; or no live worker can load it).
            FailedPrecondition: WORKER_DRAINING, the given worker is draining.
        """
        if worker_id:
            entry = self._require(worker_id)
            if model not in entry.snapshot.models:
                raise NotFound(
                    f"worker {worker_id} cannot load model {model!r}",
                    reason="MODEL_NOT_FOUND",
                    metadata={"model": model, "worker_id": worker_id},
                )
            if entry.draining:
                raise FailedPrecondition(
                    f"worker {worker_id} is draining",
                    reason="WORKER_DRAINING",
                    metadata={"worker_id": worker_id},
                )
        else:
            cutoff = now - self.heartbeat_ttl_seconds
            able = [
                e
                for e in self._entries.values()
                if e.last_seen >= cutoff and e.takes_work and model in e.snapshot.models
            ]
            if not able:
                raise NotFound(
                    f"no live worker can load model {model!r}",
                    reason="MODEL_NOT_FOUND",
                    metadata={"model": model},
                )

            def preference(e: _Entry) -> tuple[int, int, Fraction, str]:
                state = e.snapshot.models[model].state
                rank = 0 if state is ModelState.LOADED else 1 if self._loading(e, model) else 2
                return (rank, -e.snapshot.gpu_free_bytes, e.load_ratio(), e.snapshot.worker_id)

            entry = min(able, key=preference)
        return self._in_flight(entry, model, now)

    def load_finished(
        self, order: LoadOrder, now: float, *, model: WorkerModel | None = None, error: str | None = None
    ) -> None:
        """A load ordered by place() or choose_load() ended: with the model's
        state as the worker answered (the view takes it at once, before the
        next heartbeat confirms it), with an error (remembered for
        ``load_retry_seconds``), or neither (abandoned: just no longer in
        flight). A no-op when the worker has left."""
        entry = self._entries.get(order.worker_id)
        if entry is None:
            return
        if entry.loads.get(order.model) is order:
            del entry.loads[order.model]
        if model is not None:
            entry.set_model(order.model, model)
            if model.state is ModelState.LOADED:
                entry.load_failures.pop(order.model, None)
        elif error is not None:
            entry.load_failures[order.model] = _LoadFailure(error or "the load failed", now)

    def choose_unload(self, model: str, worker_id: str) -> PooledWorker:
        """The worker an UnloadModel request is for: ``worker_id``, or when
        empty the one worker that has the model loaded (or loading).

        Raises:
            NotFound: WORKER_NOT_FOUND, MODEL_NOT_FOUND (the worker does not
                list the model), MODEL_NOT_LOADED (no worker has it loaded).
            InvalidArgument: on worker_id, when several workers have it loaded.
        """
        if worker_id:
            entry = self._require(worker_id)
            if model not in entry.snapshot.models:
                raise NotFound(
                    f"worker {worker_id} does not serve model {model!r}",
                    reason="MODEL_NOT_FOUND",
                    metadata={"model": model, "worker_id": worker_id},
                )
            return entry.view()
        holding = sorted(
            wid
            for wid, e in self._entries.items()
            if (m := e.snapshot.models.get(model)) is not None
            and m.state in (ModelState.LOADED, ModelState.LOADING)
        )
        if not holding:
            raise NotFound(
                f"no worker has model {model!r} loaded", reason="MODEL_NOT_LOADED", metadata={"model": model}
            )
        if len(holding) > 1:
            raise InvalidArgument(
                "worker_id", f"is required: model {model!r} is loaded on {len(holding)} workers"
            )
        return self._entries[holding[0]].view()

    def set_model(self, worker_id: str, model: str, state: WorkerModel) -> None:
        """Take a worker's answer about one of its models (after an unload)
        before the next heartbeat confirms it. A no-op when the worker has left."""
        entry = self._entries.get(worker_id)
        if entry is not None:
            entry.set_model(model, state)

    def _no_capacity(self, model: str, served: int) -> ResourceExhausted:
        return ResourceExhausted(
            f"all {served} live workers serving {model!r} are full or not ready",
            reason="NO_CAPACITY",
            metadata={"model": model, "workers": str(served)},
            retry_after=NO_CAPACITY_RETRY_SECONDS,
        )

    def _order_load(self, model: str, now: float) -> int:
        """Raise ModelLoading (joining a load under way, or ordering one) or
        MODEL_LOAD_FAILED when the model can be loaded somewhere; else return
        how many live workers list it but are still starting (they may take
        it soon)."""
        cutoff = now - self.heartbeat_ttl_seconds
        live = [e for e in self._entries.values() if e.last_seen >= cutoff and model in e.snapshot.models]
        if not live:
            return 0
        loading = [e for e in live if not e.draining and self._loading(e, model)]
        if loading:
            entry = min(loading, key=lambda e: e.snapshot.worker_id)
            order = entry.loads.get(model)
            if order is not None:
                estimate = order.estimate_seconds - (now - order.ordered_at)
            else:
                estimate = entry.snapshot.models[model].load_estimate_seconds
            raise ModelLoading(model, entry.snapshot.worker_id, estimate, None)
        candidates = [
            e
            for e in live
            if e.takes_work
            and e.snapshot.models[model].state
            in (ModelState.UNLOADED, ModelState.UNLOADING, ModelState.FAILED)
            and e.recently_failed(model, now, self.load_retry_seconds) is None
        ]
        if candidates:
            entry = min(
                candidates, key=lambda e: (-e.snapshot.gpu_free_bytes, e.load_ratio(), e.snapshot.worker_id)
            )
            order = self._in_flight(entry, model, now)
            raise ModelLoading(model, order.worker_id, order.estimate_seconds, order)
        failed = [
            (e.snapshot.worker_id, failure)
            for e in live
            if (failure := e.recently_failed(model, now, self.load_retry_seconds)) is not None
        ]
        if failed:
            worker_id, failure = min(failed, key=lambda pair: pair[0])
            raise FailedPrecondition(
                f"model {model!r} failed to load on worker {worker_id}: {failure.error}",
                reason="MODEL_LOAD_FAILED",
                metadata={"model": model, "worker_id": worker_id, "error": failure.error},
            )
        return sum(1 for e in live if not e.drained and e.snapshot.state is WorkerState.STARTING)

    @staticmethod
    def _loading(entry: _Entry, model: str) -> bool:
        return model in entry.loads or entry.snapshot.models[model].state is ModelState.LOADING

    @staticmethod
    def _in_flight(entry: _Entry, model: str, now: float) -> LoadOrder:
        order = entry.loads.get(model)
        if order is None:
            snapshot = entry.snapshot
            order = LoadOrder(
                snapshot.worker_id, snapshot.address, model, snapshot.models[model].load_estimate_seconds, now
            )
            entry.loads[model] = order
        return order

    @staticmethod
    def _note_failures(entry: _Entry, now: float) -> None:
        for name, model in entry.snapshot.models.items():
            if model.state is ModelState.FAILED:
                if name not in entry.load_failures:
                    entry.load_failures[name] = _LoadFailure(model.error or "the load failed", now)
            elif model.state is ModelState.LOADED:
                entry.load_failures.pop(name, None)

    def release(self, lease_id: str) -> bool:
        """Free a lease's slot. False when the lease is unknown, already
        released, or its worker was dropped."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        entry = self._entries.get(lease.worker_id)
        if entry is not None:
            entry.lease_ids.discard(lease_id)
        return True

    def release_job(self, job_id: str) -> list[str]:
        """Free every lease still held for a job that has ended. The
        orchestrator releases its leases itself; this catches the ones it could
        not (it crashed or was restarted mid-job). Returns the released ids."""
        held = [lease_id for lease_id, lease in self._leases.items() if lease.job_id == job_id]
        for lease_id in held:
            self.release(lease_id)
        return held

    def drain(self, worker_id: str) -> DrainResult:
        """Stop placing on a worker; its leases stay until released. The mark
        lasts until the worker is dropped.

        Raises:
            NotFound: WORKER_NOT_FOUND, the pool does not track the worker.
        """
        entry = self._require(worker_id)
        was_draining = entry.draining
        entry.drained = True
        return DrainResult(entry.view(), not was_draining)

    def worker(self, worker_id: str) -> PooledWorker:
        """One worker. Raises NotFound(WORKER_NOT_FOUND) when not tracked."""
        return self._require(worker_id).view()

    def workers(self) -> list[PooledWorker]:
        """Every tracked worker, sorted by id."""
        return [self._entries[wid].view() for wid in sorted(self._entries)]

    def workers_page(self, after: str, limit: int) -> tuple[list[PooledWorker], str | None]:
        """Up to ``limit`` workers whose id sorts after ``after`` ("" for the
        start), by id, and the id to continue after, or None at the end. A
        continuation stays valid while workers come and go: it resumes at the
        next id in order."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        ids = sorted(self._entries)
        start = bisect.bisect_right(ids, after) if after else 0
        chunk = ids[start : start + limit]
        following = chunk[-1] if start + limit < len(ids) else None
        return [self._entries[wid].view() for wid in chunk], following

    def _require(self, worker_id: str) -> _Entry:
        entry = self._entries.get(worker_id)
        if entry is None:
            raise NotFound(
                f"worker {worker_id!r} is not in the pool",
                reason="WORKER_NOT_FOUND",
                metadata={"worker_id": worker_id},
            )
        return entry
