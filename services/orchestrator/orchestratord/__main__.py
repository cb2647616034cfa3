"""orchestratord: the composition root. Every part is built once, here.

Start: database engine -> migrations -> clients of routerd, pool-managerd,
memoryd and the workers -> recovery (restart rules) -> server -> journal,
NATS publisher and dispatcher.
Stop (ServiceHost): leave -> the server drains -> dispatcher (running jobs'
Generate calls cancelled, leases released, jobs left as the database has
them for the next start) -> deadlines disarmed -> journal's last flush ->
NATS publisher -> channels -> engine disposed.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import make_url

from hearth.api.orchestrator.v1 import orchestrator_pb2_grpc
from hearth.runtime import ServiceHost, load_settings, open_channel, serve
from orchestratord.adapters.metrics import OrchestratorMetrics
from orchestratord.adapters.migrate import upgrade_database
from orchestratord.adapters.nats_events import NatsEventPublisher
from orchestratord.adapters.postgres import PostgresJobStore, create_engine
from orchestratord.adapters.services import (
    GrpcMemory,
    GrpcPool,
    GrpcRouter,
    GrpcWorkers,
    close_channels,
    open_worker_channel,
)
from orchestratord.api.servicer import SERVICE_NAME, OrchestratorServicer
from orchestratord.config import Settings
from orchestratord.domain.active import ActiveJobs
from orchestratord.domain.dispatcher import Dispatcher, DispatchSettings
from orchestratord.domain.jobs import ActiveJob, JobEvent
from orchestratord.domain.journal import EventJournal
from orchestratord.domain.queue import JobQueue
from orchestratord.domain.service import JobService
from orchestratord.domain.validation import SubmitLimits


async def run(settings: Settings) -> None:
    host = ServiceHost("orchestratord", settings)
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
    if settings.run_migrations:
        try:
            await upgrade_database(engine)
        except Exception as err:
            await engine.dispose()
            where = make_url(settings.database_url).render_as_string(hide_password=True)
            raise SystemExit(f"orchestratord: cannot migrate the database at {where}: {err}") from None

    telemetry = host.telemetry
    router_channel = open_channel(settings.router_address, telemetry)
    pool_channel = open_channel(settings.pool_address, telemetry)
    memory_channel = open_channel(settings.memory_address, telemetry) if settings.memory_address else None
    workers = GrpcWorkers(open_worker_channel)
    store = PostgresJobStore(engine)
    metrics = OrchestratorMetrics(host.metrics)

    def trace_context_of(job_id: str) -> object | None:
        job: ActiveJob | None = active.get(job_id)
        return job.trace_context if job is not None else None

    if host.bus is None:
        raise SystemExit("orchestratord: needs the NATS bus")
    publisher = NatsEventPublisher(host.bus, trace_context_of=trace_context_of)

    def publish_committed(events: list[JobEvent]) -> None:
        for event in events:
            publisher.job_event(event)

    journal = EventJournal(
        store,
        flush_interval=settings.journal_flush_seconds,
        max_batch=settings.journal_max_batch,
        on_committed=publish_committed,
    )
    active = ActiveJobs(JobQueue(settings.max_queued), journal, metrics)
    dispatcher = Dispatcher(
        active,
        journal,
        GrpcPool(pool_channel),
        workers,
        GrpcMemory(memory_channel),
        metrics,
        telemetry.tracer,
        DispatchSettings(
            max_running=settings.max_running,
            place_retry_seconds=settings.place_retry_seconds,
            memory_top_k=settings.memory_context_top_k,
            memory_max_chars=settings.memory_context_max_chars,
        ),
    )
    jobs = JobService(
        active,
        store,
        GrpcRouter(router_channel),
        publisher,
        metrics,
        SubmitLimits(
            settings.max_prompt_chars, settings.default_max_tokens, settings.default_timeout_seconds
        ),
        context_budget_chars=settings.memory_context_max_chars,
        dispatcher=dispatcher,
    )
    try:
        await jobs.recover()
    except Exception as err:
        await engine.dispose()
        raise SystemExit(f"orchestratord: recovery from the database failed: {err}") from None

    host.add_service(
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
        OrchestratorServicer(jobs),
        SERVICE_NAME,
    )

    async def close_clients() -> None:
        await workers.close()
        await close_channels(router_channel, pool_channel, memory_channel)

    # Cleanup hooks run newest first: the dispatcher stops first, the engine last.
    host.on_cleanup(engine.dispose)
    host.on_cleanup(close_clients)
    host.on_cleanup(publisher.stop)
    host.on_cleanup(journal.stop)
    host.on_cleanup(active.stop)
    host.on_cleanup(dispatcher.stop)

    async def started() -> None:
        journal.start()
        publisher.start()
        dispatcher.start()

    await serve(host, started=started)


def main() -> None:
    settings = load_settings(Settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
