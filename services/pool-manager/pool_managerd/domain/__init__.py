"""Pure placement logic: no grpc, nats or clocks."""

from pool_managerd.domain.pool import (
    ChangeKind,
    DrainResult,
    PoolChange,
    PoolChangeSink,
    PooledWorker,
    PoolView,
    WorkerLease,
    WorkerSnapshot,
    WorkerState,
)

__all__ = [
    "ChangeKind",
    "DrainResult",
    "PoolChange",
    "PoolChangeSink",
    "PoolView",
    "PooledWorker",
    "WorkerLease",
    "WorkerSnapshot",
    "WorkerState",
]
