"""The Postgres job store against a real (embedded) Postgres: migrations,
submit with request_id dedupe, batched events, job ends, paging, recovery."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestratord.adapters.migrate import head_revision, upgrade_database
from orchestratord.adapters.postgres import PostgresJobStore
from orchestratord.api.convert import event_to_proto
from orchestratord.domain.jobs import (
    ActiveJob,
    Completed,
    JobEvent,
    JobSpec,
    JobState,
    Outcome,
    Priority,
    Queued,
    RouteDecision,
    Tokens,
)

pytestmark = pytest.mark.unit

ROUTE = RouteDecision(("tiny",), {"schema_version": 1, "chosen_target": "tiny"})


def new_job(
    created_at: float, *, request_id: str | None = None, priority: Priority = Priority.INTERACTIVE
) -> ActiveJob:
    job_id = str(uuid.uuid4())
    queued = JobEvent(job_id, 1, created_at, Queued(0))
    spec = JobSpec(prompt="hello", model="tiny", priority=priority, labels={"team": "a"})
    return ActiveJob(job_id, spec, ROUTE, created_at, [queued], request_id=request_id)


async def insert(store: PostgresJobStore, job: ActiveJob) -> bool:
    return await store.insert_job(job.snapshot(), job.events[0])


async def test_migrations_create_the_schema_and_are_idempotent(engine: AsyncEngine) -> None:
    assert await upgrade_database(engine) == head_revision() == "0005"
    async with engine.connect() as conn:
        tables = set(
            (
                await conn.execute(text("select tablename from pg_tables where schemaname = 'public'"))
            ).scalars()
        )
        indexes = set(
            (await conn.execute(text("select indexname from pg_indexes where tablename = 'jobs'"))).scalars()
        )
    assert {"jobs", "job_events", "runs", "alembic_version"} <= tables
    assert {
        "projects",
        "tasks",
        "task_notes",
        "task_links",
        "context_overrides",
        "context_snapshots",
        "task_runs",
        "plans",
        "plan_attempts",
        "work_events",
    } <= tables
    assert {"jobs_request_id_key", "jobs_state_created_at_idx", "jobs_created_at_idx"} <= indexes


async def test_insert_and_read_back_a_job(engine: AsyncEngine) -> None:
    store = PostgresJobStore(engine)
    job = new_job(1_700_000_000.25)
    assert await insert(store, job)
    stored = await store.get_job(job.job_id)
    assert stored is not None
    assert stored.state is JobState.QUEUED
    assert stored.spec == job.spec
    assert stored.route == ROUTE
    assert stored.created_at == pytest.approx(job.created_at)
    assert stored.last_sequence == 1
    assert stored.run is None
    assert [e.body for e in await store.read_events(job.job_id, 0)] == [Queued(0)]
    assert await store.get_job(str(uuid.uuid4())) is None


async def test_request_id_deduplicates_even_under_a_race(engine: AsyncEngine) -> None:
    store = PostgresJobStore(engine)
    request_id = str(uuid.uuid4())
    first, second, third = (new_job(1_700_000_000.0 + i, request_id=request_id) for i in range(3))
    assert await insert(store, first)
    assert not await insert(store, second)
    # Two concurrent submissions with a fresh request_id: exactly one wins.
    racing_id = str(uuid.uuid4())
    a, b = new_job(1_700_000_010.0, request_id=racing_id), new_job(1_700_000_011.0, request_id=racing_id)
    results = await asyncio.gather(insert(store, a), insert(store, b))
    assert sorted(results) == [False, True]
    winner = await store.find_by_request_id(racing_id)
    assert winner is not None and winner.job_id == (a if results[0] else b).job_id
    found = await store.find_by_request_id(request_id)
    assert found is not None and found.job_id == first.job_id
    assert await store.get_job(third.job_id) is None


async def test_batched_events_and_the_end_round_trip_in_order(engine: AsyncEngine) -> None:
    store = PostgresJobStore(engine)
    job = new_job(1_700_000_000.0)
    await insert(store, job)
    started = job.start("tiny", "w1", 7, 1_700_000_001.0)
    assert started is not None
    # Times with sub-microsecond parts, as time.time() gives them.
    tokens = [job.append_tokens(f"t{i} ", 1, 1_700_000_001.1 + i / 100 + 3.7e-7) for i in range(600)]
    # The first batch carries the started event; RUNNING follows from it.
    await store.write_batch([started, *tokens[:300]], [])  # type: ignore[list-item]
    running = await store.get_job(job.job_id)
    assert (
        running is not None
        and running.state is JobState.RUNNING
        and running.started_at == pytest.approx(1_700_000_001.0)
    )
    job.trace_id = "ab" * 16
    assert job.claim_end(Outcome.completed("LENGTH", 600), 1_700_000_009.0) is not None
    await store.write_batch(tokens[300:], [job.end_record()])  # type: ignore[arg-type]
    events = await store.read_events(job.job_id, 0)
    assert [e.sequence for e in events] == list(range(1, 604))
    assert "".join(e.body.text for e in events if isinstance(e.body, Tokens)) == job.output
    assert events[-1].body == Completed("LENGTH", 600)
    assert [e.sequence for e in await store.read_events(job.job_id, 600)] == [601, 602, 603]
    # A resume from inside a stored run of tokens starts right after it.
    assert [e.sequence for e in await store.read_events(job.job_id, 450)] == list(range(451, 604))
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("select count(*) from job_events where job_id = :id"), {"id": job.job_id})
        ).scalar()
    # Queued, started, two runs of 300 tokens (one row each), completed.
    assert rows == 5
    # Read back from the database, an event is on the wire exactly as it was live.
    live = [*job.events, job.end_record().event]
    assert [event_to_proto(e).SerializeToString() for e in events] == [
        event_to_proto(e).SerializeToString() for e in live
    ]
    ended = await store.get_job(job.job_id)
    assert ended is not None
    assert ended.state is JobState.COMPLETED
    assert ended.output == job.output
    assert ended.last_sequence == 603
    assert ended.run is not None
    assert ended.run.output_tokens == 600 and ended.run.input_tokens == 7
    assert ended.run.worker_id == "w1" and ended.run.trace_id == "ab" * 16
    assert ended.run.time_to_first_token == pytest.approx(1.1)
    # Writing the same batch again (a retry after a lost commit) changes nothing.
    await store.write_batch(tokens[300:], [job.end_record()])  # type: ignore[arg-type]
    assert len(await store.read_events(job.job_id, 0)) == 603


async def test_list_jobs_pages_newest_first_with_a_state_filter(engine: AsyncEngine) -> None:
    store = PostgresJobStore(engine)
    jobs = [new_job(1_700_000_000.0 + i * 0.000001) for i in range(7)]  # microseconds apart
    for job in jobs:
        await insert(store, job)
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_jobs(3, after, None)
        seen.extend(j.job_id for j in page.jobs)
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [j.job_id for j in reversed(jobs)]
    started = jobs[2].start("tiny", "w1", 1, 1_700_000_001.0)
    await store.write_batch([started], [])  # type: ignore[list-item]
    page = await store.list_jobs(10, None, JobState.RUNNING)
    assert [j.job_id for j in page.jobs] == [jobs[2].job_id] and page.next_after is None


async def test_recovery_fails_running_jobs_and_returns_queued_ones_oldest_first(engine: AsyncEngine) -> None:
    store = PostgresJobStore(engine)
    running = new_job(1_700_000_000.0)
    queued_batch = new_job(1_700_000_001.0, priority=Priority.BATCH)
    queued_interactive = new_job(1_700_000_002.0)
    ended = new_job(1_700_000_003.0)
    for job in (running, queued_batch, queued_interactive, ended):
        await insert(store, job)
    started = running.start("tiny", "w1", 3, 1_700_000_004.0)
    partial = [running.append_tokens(t, 1, 1_700_000_005.0) for t in ("Hel", "lo")]
    assert ended.claim_end(Outcome.cancelled("no longer needed"), 1_700_000_004.5) is not None
    await store.write_batch([started, *partial], [ended.end_record()])  # type: ignore[list-item]

    recovery = await store.recover(1_700_000_100.0)

    assert [e.job_id for e in recovery.failed] == [running.job_id]
    failure = recovery.failed[0]
    assert failure.sequence == 5 and failure.is_terminal
    assert failure.body.reason == "ORCHESTRATOR_RESTARTED"  # type: ignore[union-attr]
    after = await store.get_job(running.job_id)
    assert after is not None
    assert after.state is JobState.FAILED and after.end_reason == "ORCHESTRATOR_RESTARTED"
    assert after.output == "Hello" and after.last_sequence == 5
    assert after.started_at == pytest.approx(1_700_000_004.0)
    assert [e.sequence for e in await store.read_events(running.job_id, 0)] == [1, 2, 3, 4, 5]
    assert [r.snapshot.job_id for r in recovery.queued] == [queued_batch.job_id, queued_interactive.job_id]
    assert recovery.queued[0].snapshot.spec.priority is Priority.BATCH
    assert [e.body for e in recovery.queued[0].events] == [Queued(0)]
    # A second recovery finds nothing left running.
    again = await store.recover(1_700_000_200.0)
    assert again.failed == [] and len(again.queued) == 2
