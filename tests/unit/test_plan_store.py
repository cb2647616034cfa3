"""The task store's 0004 parts against a real (embedded) Postgres: plans and
their attempts, seeding a plan in one transaction, the work event log
(every write, gap-free in commit order, the views rebuilt from it equal to
the tables, the rows of 0003 imported by the migration), and the usage
report's SQL against its reference."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from hearth.embedded import EmbeddedPostgres
from orchestratord.adapters.migrate import alembic_config, head_revision, upgrade_database
from orchestratord.adapters.postgres import create_engine
from orchestratord.adapters.task_store import PostgresTaskStore
from orchestratord.domain.events import WorkEvent, rebuild_views, view_differences
from orchestratord.domain.plans import AttemptStatus, Plan, PlanAttempt, PlanDraft, PlanStatus, PlanTask
from orchestratord.domain.ports import TaskStore
from orchestratord.domain.stats import Grouping, StatsQuery, UsageRecord, aggregate
from orchestratord.domain.tasks import (
    ContextOverride,
    ContextSnapshot,
    Link,
    LinkKind,
    RunStatus,
    Task,
    TaskInput,
    TaskRun,
    TaskStatus,
)
from tests.conftest import create_database

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

T0 = 1_735_603_200.25  # 2024-12-31 00:00:00.25 UTC
DAY = 86_400.0


@pytest.fixture
def committed() -> list[WorkEvent]:
    return []


@pytest.fixture
def store(engine: AsyncEngine, committed: list[WorkEvent]) -> PostgresTaskStore:
    store = PostgresTaskStore(engine, on_committed=committed.extend)
    _port: TaskStore = store
    return store


def new_task(project_id: str = "p1", name: str = "t", **fields: object) -> Task:
    values: dict[str, object] = {
        "task_id": 0,
        "project_id": project_id,
        "name": name,
        "status": TaskStatus.READY,
        "input": TaskInput(prompt=f"do {name}"),
        "created_at": T0,
        "created_by": "alice",
        "updated_at": T0,
        "updated_by": "alice",
    }
    return Task(**{**values, **fields})  # type: ignore[arg-type]


def new_plan(project_id: str = "p1") -> Plan:
    return Plan(
        plan_id=0,
        project_id=project_id,
        goal="build a parser",
        status=PlanStatus.PROPOSING,
        created_at=T0,
        created_by="alice",
        updated_at=T0,
        updated_by="alice",
    )


DRAFT = PlanDraft(
    (
        PlanTask("index", "conventions", "writer", "Write the INDEX.", produces_index=True),
        PlanTask("code", "parser", "coder", "Write it."),
        PlanTask("test", "tests", "tester", "Test it.", requires=("code",)),
    ),
    summary="three steps",
)


async def all_events(store: PostgresTaskStore) -> list[WorkEvent]:
    return await store.read_events(since=0, limit=100_000)


async def a_bit_of_everything(store: PostgresTaskStore) -> dict[str, int]:
    """Every kind of write the store makes, on two projects."""
    await store.set_project_index("p1", "# INDEX", at=T0, by="alice")
    a = (await store.create_task(new_task(name="a"))).task_id
    b = (await store.create_task(new_task(name="b", role="tester"))).task_id
    c = (await store.create_task(new_task("p2", name="c"))).task_id
    await store.add_link(Link(b, a, LinkKind.REQUIRES, T0, "alice"))
    await store.add_link(Link(b, a, LinkKind.REFERS, T0, "alice"))
    await store.delete_link(b, a, LinkKind.REFERS, by="bob")
    await store.set_statuses(
        [(b, TaskStatus.PENDING, "waits"), (c, TaskStatus.DONE, "")], at=T0 + 1, by="bob"
    )
    await store.add_note(a, "bob", "a note", T0 + 2)
    await store.set_override(ContextOverride(b, ("task:1",), ("index",), "bob", T0 + 3))
    await store.update_task(dataclasses.replace(await store.get_task(a), priority=5, updated_at=T0 + 4))  # type: ignore[arg-type]
    snapshot = ContextSnapshot("h1", ({"source": "index"},), 100, "estimate", False, "prompt")
    run = await store.start_run(
        snapshot,
        TaskRun(
            0, a, "p1", RunStatus.RUNNING, "h1", job_id=str(uuid.uuid4()), started_at=T0 + 5, role="coder"
        ),
        by="bob",
    )
    ended = dataclasses.replace(
        run, status=RunStatus.DONE, output="out", input_tokens=7, ended_at=T0 + 6, time_to_first_token=0.25
    )
    await store.end_runs([(ended, TaskStatus.DONE, "")], [(b, TaskStatus.READY, "")], at=T0 + 6, by="bob")
    rerun = await store.create_run(dataclasses.replace(run, run_id=0, rerun_of=run.run_id, started_at=T0 + 7))
    await store.finish_run(
        dataclasses.replace(rerun, status=RunStatus.FAILED, end_reason="X", ended_at=T0 + 8)
    )
    plan = await store.create_plan(new_plan("p3"))
    await store.add_plan_attempt(
        PlanAttempt(
            plan.plan_id, 1, AttemptStatus.INVALID, output="{", errors=("$: not JSON",), started_at=T0
        ),
        "p3",
    )
    drafted = await store.update_plan(
        dataclasses.replace(plan, status=PlanStatus.DRAFT, draft=DRAFT, updated_at=T0 + 9), "drafted"
    )
    seeded, _, _ = await store.seed_plan(
        dataclasses.replace(drafted, status=PlanStatus.APPROVED, decided_at=T0 + 10, decided_by="alice"),
        [(t.key, new_task("p3", name=t.name, role=t.role)) for t in DRAFT.tasks],
        [("test", "code"), ("code", "index")],
        index_key="index",
    )
    return {"a": a, "b": b, "c": c, "plan": seeded.plan_id}


async def test_every_write_is_an_event_and_the_views_are_their_fold(
    store: PostgresTaskStore, committed: list[WorkEvent]
) -> None:
    await a_bit_of_everything(store)
    events = await all_events(store)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    # on_committed saw the same events, in order.
    assert [(e.sequence, e.kind) for e in committed] == [(e.sequence, e.kind) for e in events]
    kinds = {e.kind for e in events}
    assert {
        "project.index_set",
        "project.created",
        "task.created",
        "task.updated",
        "task.status_changed",
        "link.created",
        "link.deleted",
        "note.added",
        "override.set",
        "run.started",
        "run.ended",
        "plan.proposed",
        "plan_attempt.recorded",
        "plan.drafted",
        "plan.approved",
    } <= kinds
    deleted = next(e for e in events if e.kind == "link.deleted")
    assert deleted.agent == "bob" and deleted.project_id == "p1"
    assert view_differences(rebuild_views(events), await store.read_views()) == []
    # A project's events rebuild that project's views.
    p1 = await store.read_events(project_id="p1", limit=1000)
    assert {e.project_id for e in p1} == {"p1"}
    assert view_differences(rebuild_views(p1), (await store.read_views()).only_projects(["p1"])) == []
    # Paging: since and limit.
    assert [e.sequence for e in await store.read_events(since=3, limit=2)] == [4, 5]


async def test_concurrent_writes_number_events_without_gaps(store: PostgresTaskStore) -> None:
    task_id = (await store.create_task(new_task())).task_id
    await asyncio.gather(*(store.add_note(task_id, "bot", f"note {n}", T0 + n) for n in range(20)))
    events = await all_events(store)
    assert [e.sequence for e in events] == list(range(1, 23))  # project, task, 20 notes
    assert view_differences(rebuild_views(events), await store.read_views()) == []


async def test_a_plan_round_trips_with_its_attempts_and_is_seeded_in_one_transaction(
    store: PostgresTaskStore,
) -> None:
    plan = await store.create_plan(new_plan())
    assert plan.plan_id > 0 and plan.status is PlanStatus.PROPOSING and plan.attempts == ()
    attempt = PlanAttempt(
        plan.plan_id,
        1,
        AttemptStatus.INVALID,
        job_id=str(uuid.uuid4()),
        model="m",
        output="not\x00 json",
        errors=("$: the answer holds no JSON object",),
        input_tokens=12,
        output_tokens=3,
        cost=0.5,
        time_to_first_token=0.125,
        started_at=T0,
        ended_at=T0 + 1,
        agent="alice",
    )
    stored = await store.add_plan_attempt(attempt, "p1")
    assert stored == dataclasses.replace(attempt, output="not\ufffd json")
    drafted = await store.update_plan(
        dataclasses.replace(plan, status=PlanStatus.DRAFT, draft=DRAFT, revision=1, updated_at=T0 + 2),
        "drafted",
    )
    assert drafted.draft == DRAFT and drafted.revision == 1 and drafted.attempts == (stored,)
    assert await store.get_plan(plan.plan_id) == drafted
    assert await store.list_plans("p1") == [drafted]
    assert await store.list_plans("p1", PlanStatus.APPROVED) == []
    assert await store.get_plan(plan.plan_id + 100) is None

    before = len(await all_events(store))
    tasks = [(t.key, new_task(name=t.name, role=t.role)) for t in DRAFT.tasks]
    with pytest.raises(KeyError):
        # A requires naming no task of the plan: nothing is written.
        await store.seed_plan(drafted, tasks, [("test", "nope")])
    assert await store.list_tasks("p1") == [] and len(await all_events(store)) == before

    approved, created, links = await store.seed_plan(
        dataclasses.replace(drafted, status=PlanStatus.APPROVED, decided_at=T0 + 3, decided_by="bob"),
        tasks,
        [("test", "code"), ("code", "index")],
        index_key="index",
    )
    ids = {task.name: task.task_id for task in created}
    assert approved.status is PlanStatus.APPROVED and approved.decided_by == "bob"
    assert approved.task_ids == {"index": ids["conventions"], "code": ids["parser"], "test": ids["tests"]}
    assert approved.index_task_id == ids["conventions"]
    assert [(link.from_task, link.to_task) for link in links] == [
        (ids["tests"], ids["parser"]),
        (ids["parser"], ids["conventions"]),
    ]
    assert [t.name for t in await store.list_tasks("p1")] == ["conventions", "parser", "tests"]


async def test_stats_sql_matches_the_reference_and_reads_no_text(store: PostgresTaskStore) -> None:
    a = (await store.create_task(new_task(name="a"))).task_id
    b = (await store.create_task(new_task("p2", name="b"))).task_id
    records: list[UsageRecord] = []
    specs = [
        (a, "p1", "ana", "coder", "small", T0, RunStatus.DONE, 10, 4, 0.5, 0.1),
        (a, "p1", "ana", "coder", "big", T0 + 60, RunStatus.FAILED, 20, 1, 0.25, None),
        (a, "p1", "bo", "", "small", T0 + DAY, RunStatus.DONE, 5, 5, 0.0, 0.3),
        (b, "p2", "ana", "tester", "small", T0 + 31 * DAY, RunStatus.CANCELLED, 1, 0, 0.0, 0.2),
    ]
    for task_id, project, agent, role, model, at, status, tin, tout, cost, ttft in specs:
        run = await store.create_run(
            TaskRun(0, task_id, project, RunStatus.RUNNING, "", started_at=at, started_by=agent, role=role)
        )
        await store.finish_run(
            dataclasses.replace(
                run,
                status=status,
                model=model,
                input_tokens=tin,
                output_tokens=tout,
                cost=cost,
                time_to_first_token=ttft,
                output="secret output",
                ended_at=at + 1,
            )
        )
        records.append(
            UsageRecord(project, agent, role, model, at, status is RunStatus.FAILED, tin, tout, cost, ttft)
        )
    # A run still running is not counted.
    await store.create_run(TaskRun(0, a, "p1", RunStatus.RUNNING, "", started_at=T0, started_by="ana"))
    plan = await store.create_plan(new_plan())
    await store.add_plan_attempt(
        PlanAttempt(
            plan.plan_id, 1, AttemptStatus.FAILED, model="mgr", role="manager", input_tokens=3,
            started_at=T0 + 5, ended_at=T0 + 6, agent="ana",
        ),
        "p1",
    )  # fmt: skip
    records.append(UsageRecord("p1", "ana", "manager", "mgr", T0 + 5, True, 3, 0, 0.0, None))
    for query in (
        StatsQuery(),
        StatsQuery(group_by=Grouping.DAY),
        StatsQuery(group_by=Grouping.MONTH),
        StatsQuery(group_by=Grouping.ROLE, project_id="p1"),
        StatsQuery(group_by=Grouping.MODEL, agent="ana"),
        StatsQuery(group_by=Grouping.DAY, start=T0 + 30, end=T0 + 2 * DAY),
    ):
        got, want = await store.stats(query), aggregate(records, query)
        assert [r.key for r in got.rows] == [r.key for r in want.rows], query
        for g, w in zip([*got.rows, got.total], [*want.rows, want.total], strict=True):
            assert (g.jobs, g.failed, g.input_tokens, g.output_tokens, g.timed_jobs) == (
                w.jobs,
                w.failed,
                w.input_tokens,
                w.output_tokens,
                w.timed_jobs,
            ), query
            assert g.cost == pytest.approx(w.cost)
            assert g.mean_time_to_first_token == pytest.approx(w.mean_time_to_first_token)
            assert g.p95_time_to_first_token == pytest.approx(w.p95_time_to_first_token)
    assert "secret output" not in repr(await store.stats(StatsQuery(group_by=Grouping.MODEL)))


async def test_the_migration_imports_the_rows_of_0003_as_events(postgres: EmbeddedPostgres) -> None:
    engine = create_engine(await create_database(postgres))
    try:

        def to_0003(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")

        async with engine.begin() as conn:
            await conn.run_sync(to_0003)
            await conn.execute(
                text(
                    "INSERT INTO projects (id, created_at, created_by, index_document)"
                    " VALUES ('old', now(), 'ann', '# old')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO tasks (project_id, name, status, input, created_at, updated_at)"
                    " VALUES ('old', 'one', 'done', '{\"prompt\": \"x\"}', now(), now()),"
                    " ('old', 'two', 'ready', '{\"prompt\": \"y\"}', now(), now())"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO task_links (from_task, to_task, kind, created_at)"
                    " VALUES (2, 1, 'requires', now())"
                )
            )
            await conn.execute(
                text("INSERT INTO task_notes (task_id, text, created_at) VALUES (1, 'n', now())")
            )
            await conn.execute(
                text(
                    "INSERT INTO task_runs (task_id, project_id, status, started_at, output)"
                    " VALUES (1, 'old', 'done', now(), 'o')"
                )
            )
        # Up to the head (0004 and whatever comes after it).
        assert await upgrade_database(engine) == head_revision()
        store = PostgresTaskStore(engine)
        events = await all_events(store)
        assert [e.kind for e in events] == [
            "project.imported",
            "task.imported",
            "task.imported",
            "note.imported",
            "link.imported",
            "run.imported",
        ]
        assert {e.project_id for e in events} == {"old"}
        assert view_differences(rebuild_views(events), await store.read_views()) == []
        # The log continues after the imported rows.
        await store.add_note(1, "bot", "later", T0)
        assert [e.sequence for e in await all_events(store)] == list(range(1, 8))
        assert view_differences(rebuild_views(await all_events(store)), await store.read_views()) == []
    finally:
        await engine.dispose()
