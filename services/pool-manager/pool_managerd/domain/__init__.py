"""Pure placement logic: no grpc, nats or clocks."""

from pool_managerd.domain.pool import (
    ChangeKind,
    DrainResult,
    LoadOrder,
    ModelLoading,
    ModelState,
    PoolChange,
    PoolChangeSink,
    PooledWorker,
    PoolView,
    WorkerControl,
    WorkerLease,
    WorkerModel,
    WorkerSnapshot,
    WorkerState,
)

__all__ = [
    "ChangeKind",
    "DrainResult",
    "LoadOrder",
    "ModelLoading",
    "ModelState",
    "PoolChange",
    "PoolChangeSink",
    "PoolView",
    "PooledWorker",
    "WorkerControl",
    "WorkerLease",
    "WorkerModel",
    "WorkerSnapshot",
    "WorkerState",
]
