"""Commands to workers over gRPC, and the model loads that placement orders."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from hearth.api.worker.v1 import worker_pb2, worker_pb2_grpc
from hearth.errors import HearthError, Unavailable, from_rpc_error
from hearth.runtime import Telemetry, open_channel
from pool_managerd.adapters.heartbeats import model_from_info
from pool_managerd.domain.pool import LoadOrder, PoolView, WorkerControl, WorkerModel

log = logging.getLogger(__name__)

_Reply = TypeVar("_Reply")

#: How long a worker may take to acknowledge a Drain.
DRAIN_TIMEOUT_SECONDS = 10.0


class GrpcWorkerControl:
    """:class:`~pool_managerd.domain.pool.WorkerControl` over the workers'
    WorkerService, one traced channel per command (commands are rare).

    A worker's error comes back as the same HearthError (reason and metadata
    kept); a worker that cannot be reached, or does not answer in time, is
    Unavailable (WORKER_UNREACHABLE).

    Args:
        telemetry: the service's telemetry, so the worker's spans join the trace.
        timeout_seconds: longest a load or unload may take (a vLLM load takes minutes).
    """

    def __init__(self, telemetry: Telemetry | None, *, timeout_seconds: float = 900.0) -> None:
        self._telemetry = telemetry
        self._timeout = timeout_seconds

    async def load_model(self, address: str, model: str) -> WorkerModel:
        request = worker_pb2.LoadModelRequest(model=model)
        async with open_channel(address, self._telemetry) as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            reply = await _call(address, stub.LoadModel(request, timeout=self._timeout))
        return model_from_info(reply.model)

    async def unload_model(self, address: str, model: str, *, force: bool) -> WorkerModel:
        request = worker_pb2.UnloadModelRequest(model=model, force=force)
        async with open_channel(address, self._telemetry) as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            reply = await _call(address, stub.UnloadModel(request, timeout=self._timeout))
        return model_from_info(reply.model)

    async def drain(self, address: str) -> None:
        async with open_channel(address, self._telemetry) as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            await _call(address, stub.Drain(worker_pb2.DrainRequest(), timeout=DRAIN_TIMEOUT_SECONDS))


async def _call(address: str, call: Awaitable[_Reply]) -> _Reply:
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            error = from_rpc_error(err)
            if error.reason in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):  # no Hearth status: transport
                raise Unavailable(
                    f"worker at {address} did not answer: {err.details()}",
                    reason="WORKER_UNREACHABLE",
                    metadata={"address": address},
                ) from None
            raise error from None
        raise from_rpc_error(err) from None


class BackgroundLoads:
    """Carries out the loads that placement orders (ModelLoading.order), each
    in a task of its own, and tells the pool how each ended.

    Lifecycle: begin() after start (or without: tasks start at once); stop()
    cancels the loads under way (the workers carry on loading; the pool just
    stops waiting) and is safe twice; nothing begins after it.

    Args:
        pool: the pool to report to (same event loop).
        workers: how to reach a worker.
        clock: the monotonic clock the pool's ``now`` comes from.
    """

    def __init__(
        self, pool: PoolView, workers: WorkerControl, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = pool
        self._workers = workers
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    def begin(self, order: LoadOrder) -> None:
        """Start carrying out ``order``."""
        if self._stopped:
            self._pool.load_finished(order, self._clock())
            return
        task = asyncio.create_task(self._load(order), name=f"pool-load-{order.worker_id}-{order.model}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait until every load begun so far has ended."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def stop(self) -> None:
        self._stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # wait() rather than gather: a cancellation of stop() itself still propagates.
            await asyncio.wait(tasks)

    async def _load(self, order: LoadOrder) -> None:
        fields = {"worker_id": order.worker_id, "model": order.model}
        log.info("loading %s on worker %s", order.model, order.worker_id, extra=fields)
        model: WorkerModel | None = None
        error: str | None = None
        try:
            model = await self._workers.load_model(order.address, order.model)
        except HearthError as err:
            error = err.message or err.reason
            log.warning(
                "loading %s on worker %s failed (%s): %s",
                order.model,
                order.worker_id,
                err.reason,
                error,
                extra=fields,
            )
        except asyncio.CancelledError:
            raise
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            log.exception("loading %s on worker %s failed", order.model, order.worker_id, extra=fields)
        else:
            log.info("loaded %s on worker %s", order.model, order.worker_id, extra=fields)
        finally:
            self._pool.load_finished(order, self._clock(), model=model, error=error)
