"""orchestratord: the composition root. Every part is built once, here.

Start: HTTP API keys -> database engine -> migrations -> clients of routerd,
pool-managerd, memoryd and the workers -> recovery (restart rules) -> the HTTP
API's socket bound -> server -> journal, NATS publisher, dispatcher and the
HTTP API (uvicorn in this event loop).
Stop (ServiceHost): leave (the HTTP API takes no new connections) -> the
server drains -> the HTTP API (requests in flight get the grace period, then
streams end with an error event and their jobs are cancelled) -> dispatcher
(running jobs' Generate calls cancelled, leases released, jobs left as the
database has them for the next start) -> deadlines disarmed -> journal's last
flush -> NATS publisher -> channels -> engine disposed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

from sqlalchemy.engine import make_url

from hearth.api.orchestrator.v1 import orchestrator_pb2_grpc
from hearth.api.tasks.v1 import tasks_pb2_grpc
from hearth.runtime import ServiceHost, load_settings, open_channel, serve
from orchestratord.adapters.embeddings import GrpcEmbeddings
from orchestratord.adapters.handoffs import MemorydHandoffs
from orchestratord.adapters.metrics import OrchestratorMetrics
from orchestratord.adapters.migrate import upgrade_database
from orchestratord.adapters.model_facts import ConfiguredModels
from orchestratord.adapters.nats_events import NatsEventPublisher
from orchestratord.adapters.postgres import PostgresJobStore, create_engine
from orchestratord.adapters.responses_store import PostgresResponseStore
from orchestratord.adapters.role_routes import GrpcRoleRoutes
from orchestratord.adapters.services import (
    GrpcMemory,
    GrpcPool,
    GrpcRouter,
    GrpcWorkers,
    close_channels,
    open_worker_channel,
)
from orchestratord.adapters.task_store import PostgresTaskStore
from orchestratord.adapters.work_events import WorkEventRelay
from orchestratord.api.openai_http import (
    ApiKeys,
    ApiKeysError,
    HttpApi,
    HttpApiError,
    HttpMetrics,
    JobRequests,
    create_app,
    load_api_keys,
)
from orchestratord.api.openai_http.server import split_listen
from orchestratord.api.servicer import SERVICE_NAME, OrchestratorServicer
from orchestratord.api.tasks_servicer import SERVICE_NAME as TASKS_SERVICE_NAME
from orchestratord.api.tasks_servicer import TaskServicer
from orchestratord.config import Settings
from orchestratord.domain.active import ActiveJobs
from orchestratord.domain.dispatcher import Dispatcher, DispatchSettings
from orchestratord.domain.events import WorkEvent
from orchestratord.domain.jobs import ActiveJob, JobEvent
from orchestratord.domain.journal import EventJournal
from orchestratord.domain.planning import PlanLimits, PlanService
from orchestratord.domain.queue import JobQueue
from orchestratord.domain.service import JobService
from orchestratord.domain.validation import SubmitLimits
from orchestratord.domain.work import WorkLimits, WorkService

log = logging.getLogger(__name__)


def http_api_keys(settings: Settings) -> ApiKeys:
    """The HTTP API's keys from the settings and the keys file; exits with a
    message when the file cannot be read. Only their number is logged."""
    keys_file = Path(settings.http_api_keys_file).expanduser() if settings.http_api_keys_file else None
    try:
        keys = load_api_keys([key.get_secret_value() for key in settings.http_api_keys], keys_file)
    except ApiKeysError as err:
        raise SystemExit(f"orchestratord: {err}") from None
    if settings.http_listen:
        if keys.enabled:
            log.info("HTTP API: %d API keys configured", len(keys))
        elif not _is_loopback(split_listen(settings.http_listen)[0]):
            log.warning(
                "HTTP API on %s without API keys: anyone who can reach it can use it; set http_api_keys_file",
                settings.http_listen,
            )
    return keys


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run(settings: Settings) -> None:
    host = ServiceHost("orchestratord", settings)
    api_keys = http_api_keys(settings)
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
    metrics = OrchestratorMetrics(host.metrics, queue_capacity=settings.max_queued)

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
    router = GrpcRouter(router_channel)
    roles = settings.role_book()
    priced = frozenset(m.name for m in settings.models if m.price_input_per_1k or m.price_output_per_1k)
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
            memory_context_tokens=settings.memory_context_tokens,
            priced_targets=priced,
            first_token_timeout_seconds=settings.first_token_timeout_seconds,
        ),
        router=router,
    )
    jobs = JobService(
        active,
        store,
        router,
        publisher,
        metrics,
        SubmitLimits(
            max_prompt_chars=settings.max_prompt_chars,
            default_max_tokens=settings.default_max_tokens,
            default_timeout_seconds=settings.default_timeout_seconds,
        ),
        # The submit-time estimate counts about four characters per token.
        context_budget_tokens=settings.memory_context_tokens,
        dispatcher=dispatcher,
        roles=roles,
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
    # The work event log's copies: the store wakes the relay after each commit.
    relay: WorkEventRelay | None = None

    def work_committed(events: list[WorkEvent]) -> None:
        if relay is not None:
            relay.committed(events)

    task_store = PostgresTaskStore(engine, on_committed=work_committed)
    relay = WorkEventRelay(task_store, host.bus)
    models = ConfiguredModels(settings.models, settings.roles)
    work = WorkService(
        task_store,
        jobs,
        GrpcMemory(memory_channel) if memory_channel is not None else None,
        models,
        WorkLimits(
            default_context_budget=settings.task_context_tokens,
            default_parallelism=settings.task_parallelism,
            max_tokens=settings.task_max_tokens,
            memory_top_k=settings.memory_context_top_k,
            escalate=settings.task_escalation,
            handoffs=settings.task_handoffs,
            handoff_time_limit=settings.handoff_timeout_seconds,
        ),
        roles=roles,
        handoffs=MemorydHandoffs(memory_channel) if memory_channel is not None else None,
        role_routes=GrpcRoleRoutes(router_channel),
    )
    plans = PlanService(
        task_store,
        jobs,
        work,
        models,
        PlanLimits(max_tokens=settings.plan_max_tokens, default_attempts=settings.plan_attempts),
    )
    host.add_service(
        tasks_pb2_grpc.add_TaskServiceServicer_to_server, TaskServicer(work, plans), TASKS_SERVICE_NAME
    )

    http: HttpApi | None = None
    if settings.http_listen:
        in_flight = JobRequests(jobs)
        app = create_app(
            jobs,
            GrpcEmbeddings(memory_channel),
            settings.models,
            requests=in_flight,
            api_keys=api_keys,
            tracer=telemetry.tracer,
            metrics=HttpMetrics(host.metrics),
            max_request_bytes=settings.http_max_request_bytes,
            # /v1/responses keeps stored responses next to the jobs.
            stored_responses=PostgresResponseStore(engine),
        )
        http = HttpApi(app, settings.http_listen, in_flight, grace_seconds=settings.shutdown_grace_seconds)
        try:
            # Bound before the host reports healthy: a client that connects
            # early waits in the backlog instead of being refused.
            http.bind()
        except HttpApiError as err:
            await engine.dispose()
            raise SystemExit(f"orchestratord: {err}") from None
        host.on_leave(http.leave)

    async def close_clients() -> None:
        await workers.close()
        await close_channels(router_channel, pool_channel, memory_channel)

    # Cleanup hooks run newest first: the dispatcher stops first, the engine last.
    host.on_cleanup(engine.dispose)
    host.on_cleanup(close_clients)
    host.on_cleanup(publisher.stop)
    host.on_cleanup(relay.stop)
    host.on_cleanup(journal.stop)
    host.on_cleanup(active.stop)
    host.on_cleanup(dispatcher.stop)
    if http is not None:
        # Newest first: the HTTP API's requests end while the dispatcher still runs.
        host.on_cleanup(http.stop)

    async def started() -> None:
        journal.start()
        publisher.start()
        relay.start()
        dispatcher.start()
        if http is not None:
            await http.start()

    await serve(host, started=started)


def main() -> None:
    settings = load_settings(Settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
