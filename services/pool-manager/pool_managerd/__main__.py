"""pool-managerd's composition root: build every part once and run."""

from __future__ import annotations

import asyncio
import time

from hearth.api.pool.v1 import pool_pb2_grpc
from hearth.runtime import ServiceHost, load_settings, serve
from pool_managerd.adapters.heartbeats import HeartbeatListener
from pool_managerd.adapters.job_ends import JobEndListener
from pool_managerd.adapters.pool_changes import PoolChangePublisher
from pool_managerd.adapters.worker_control import BackgroundLoads, GrpcWorkerControl
from pool_managerd.api.servicer import PoolServicer
from pool_managerd.config import PoolManagerSettings
from pool_managerd.domain.pool import PoolView


async def run(settings: PoolManagerSettings) -> None:
    host = ServiceHost("pool-managerd", settings)
    if host.bus is None:
        raise RuntimeError("pool-managerd needs the NATS bus")
    clock = time.monotonic
    pool = PoolView(settings.heartbeat_ttl_seconds, load_retry_seconds=settings.load_retry_seconds)
    changes = PoolChangePublisher(host.bus)
    heartbeats = HeartbeatListener(
        host.bus, pool, changes, expiry_interval_seconds=settings.expiry_interval_seconds, clock=clock
    )
    job_ends = JobEndListener(host.bus, pool)
    workers = GrpcWorkerControl(host.telemetry, timeout_seconds=settings.load_timeout_seconds)
    loads = BackgroundLoads(pool, workers, clock=clock)
    servicer = PoolServicer(
        pool,
        changes,
        workers=workers,
        begin_load=loads.begin,
        tracer=host.telemetry.tracer,
        metrics=host.metrics,
        clock=clock,
    )
    host.add_service(
        pool_pb2_grpc.add_PoolServiceServicer_to_server, servicer, "hearth.api.pool.v1.PoolService"
    )
    host.on_cleanup(heartbeats.stop)
    host.on_cleanup(job_ends.stop)
    host.on_cleanup(loads.stop)

    async def started() -> None:
        await heartbeats.start()
        await job_ends.start()

    await serve(host, started=started)


def main() -> None:
    asyncio.run(run(load_settings(PoolManagerSettings)))


if __name__ == "__main__":
    main()
