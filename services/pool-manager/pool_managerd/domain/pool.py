"""The pool: a pure, in-memory view of live workers and the leases on them.

:class:`PoolView` is fed worker snapshots (from heartbeats), drops workers
whose heartbeats stop, and places jobs: it picks a live, ready worker that
serves the model and has a free slot, least loaded first, and hands out a
:class:`WorkerLease` on that slot until it is released.

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
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from hearth.errors import NotFound, ResourceExhausted, Unavailable

#: How long a caller should wait before retrying a placement that found every
#: suitable worker full.
NO_CAPACITY_RETRY_SECONDS = 0.2


class WorkerState(enum.Enum):
    """A worker's lifecycle state as it reports it."""

    UNKNOWN = "unknown"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


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
        models: each model it serves, mapped to that model's context length in tokens.
        state: its lifecycle state as it reports it.
        max_concurrency: most generations it runs at once; the pool leases at most
            this many slots on it.
        engine: the engine kind, for listings.
        source: the heartbeat's own description of the worker, carried untouched so
            that listings can show every detail; the pool never reads it.
    """

    worker_id: str
    address: str
    models: Mapping[str, int]
    state: WorkerState
    max_concurrency: int
    engine: str = ""
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


class PoolChangeSink(Protocol):
    """Where pool changes go (NATS in the service, a list in tests).
    ``publish`` must not raise for delivery failures: the pool has already
    changed and a lost notice must not undo or fail the caller."""

    async def publish(self, change: PoolChange) -> None: ...


class DrainResult(NamedTuple):
    worker: PooledWorker
    #: False when the worker was already draining (a repeated Drain).
    changed: bool


class _Entry:
    """The pool's mutable record of one worker."""

    __slots__ = ("drained", "last_seen", "lease_ids", "snapshot")

    def __init__(self, snapshot: WorkerSnapshot, now: float) -> None:
        self.snapshot = snapshot
        self.last_seen = now
        self.lease_ids: set[str] = set()
        self.drained = False

    @property
    def draining(self) -> bool:
        return self.drained or self.snapshot.state is WorkerState.DRAINING

    def view(self) -> PooledWorker:
        return PooledWorker(self.snapshot, len(self.lease_ids), self.last_seen, self.drained)


class PoolView:
    """Live workers and their leases.

    Args:
        heartbeat_ttl_seconds: a worker whose latest heartbeat is older than this
            is not live: place() skips it and expire() drops it.

    Invariants: a lease belongs to exactly one tracked worker; dropping a worker
    forgets its leases; a worker never holds more leases than its
    max_concurrency through place() (a shrinking max_concurrency can leave it
    over, and it then gets no new ones until leases are released).
    """

    def __init__(self, heartbeat_ttl_seconds: float = 2.0) -> None:
        if heartbeat_ttl_seconds <= 0:
            raise ValueError("heartbeat_ttl_seconds must be positive")
        self.heartbeat_ttl_seconds = heartbeat_ttl_seconds
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
        ordered through drain() outlives later heartbeats."""
        entry = self._entries.get(snapshot.worker_id)
        if entry is None:
            self._entries[snapshot.worker_id] = _Entry(snapshot, now)
            return ChangeKind.JOINED
        was_draining = entry.draining
        entry.snapshot = snapshot
        entry.last_seen = now
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
        that serves ``model`` and has a free slot (load = leases held /
        max_concurrency; ties go to the smaller worker id).

        Raises:
            NotFound: MODEL_NOT_FOUND, no live worker serves the model.
            ResourceExhausted: NO_CAPACITY, every live worker serving it is full,
                starting or draining; retry after a short delay.
            Unavailable: POOL_WARMING_UP, see begin_listening().
        """
        # One pass, no allocation until the lease: this runs for every job.
        cutoff = now - self.heartbeat_ttl_seconds
        best: _Entry | None = None
        best_context = 0
        served = 0
        for entry in self._entries.values():
            snapshot = entry.snapshot
            context_length = snapshot.models.get(model)
            if context_length is None or entry.last_seen < cutoff:
                continue
            served += 1
            if entry.drained or snapshot.state is not WorkerState.READY:
                continue
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
            best, best_context = entry, context_length
        if best is None:
            if served:
                raise ResourceExhausted(
                    f"all {served} live workers serving {model!r} are full or not ready",
                    reason="NO_CAPACITY",
                    metadata={"model": model, "workers": str(served)},
                    retry_after=NO_CAPACITY_RETRY_SECONDS,
                )
            if now < self._warm_at:
                raise Unavailable(
                    "the pool has only just started listening for workers; retry shortly",
                    reason="POOL_WARMING_UP",
                    metadata={"model": model},
                    retry_after=round(self._warm_at - now, 3),
                )
            raise NotFound(
                f"no live worker serves model {model!r}", reason="MODEL_NOT_FOUND", metadata={"model": model}
            )
        snapshot = best.snapshot
        lease = WorkerLease(
            str(uuid.uuid4()), job_id, snapshot.worker_id, snapshot.address, model, best_context, now
        )
        best.lease_ids.add(lease.lease_id)
        self._leases[lease.lease_id] = lease
        return lease

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
