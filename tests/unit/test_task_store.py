"""The Postgres task store against a real (embedded) Postgres: the 0003
schema, and every method of the TaskStore port."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from hearth.chat import ChatMessage, ToolCall
from hearth.errors import NotFound
from orchestratord.adapters import schema
from orchestratord.adapters.task_store import PostgresTaskStore
from orchestratord.domain.ports import TaskStore
from orchestratord.domain.tasks import (
    ContextOverride,
    ContextSnapshot,
    Link,
    LinkKind,
    Project,
    RunStatus,
    Task,
    TaskInput,
    TaskRun,
    TaskStatus,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.25


@pytest.fixture
def store(engine: AsyncEngine) -> PostgresTaskStore:
    store = PostgresTaskStore(engine)
    _port: TaskStore = store  # mypy checks that the store implements the port
    return store


def new_task(project_id: str = "p1", *, name: str = "t", priority: int = 0, created_at: float = T0) -> Task:
    return Task(
        task_id=0,
        project_id=project_id,
        name=name,
        status=TaskStatus.PENDING,
        input=TaskInput(prompt=f"do {name}"),
        priority=priority,
        created_at=created_at,
        created_by="alice",
        updated_at=created_at,
        updated_by="alice",
    )


async def create(store: PostgresTaskStore, *tasks: Task) -> list[int]:
    return [(await store.create_task(task)).task_id for task in tasks]


async def snapshot(store: PostgresTaskStore, context_hash: str = "h1") -> str:
    await store.put_snapshot(
        ContextSnapshot(context_hash, ({"source": "task:1"},), 100, "tiktoken", True, "p")
    )
    return context_hash


# --- schema ------------------------------------------------------------------


async def test_the_migrations_create_exactly_the_core_tables(engine: AsyncEngine) -> None:
    """schema.py and the migrations agree: types, nullability, server
    defaults, foreign keys and indexes."""

    def differences(conn: Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_server_default": True})
        return list(compare_metadata(context, schema.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(differences) == []
        indexes = set(
            (
                await conn.execute(
                    text(
                        "select indexname from pg_indexes"
                        " where tablename in ('tasks', 'task_links', 'task_runs')"
                    )
                )
            ).scalars()
        )
    assert {
        "tasks_project_order_idx",
        "task_links_to_task_idx",
        "task_runs_task_id_idx",
        "task_runs_project_id_idx",
    } <= indexes


# --- projects ----------------------------------------------------------------


async def test_a_project_counts_its_tasks_by_status(store: PostgresTaskStore) -> None:
    assert await store.get_project("p1") is None
    a, b, _ = await create(store, new_task(name="a"), new_task(name="b"), new_task(name="c"))
    await create(store, new_task("p2"))
    await store.set_statuses([(a, TaskStatus.READY, ""), (b, TaskStatus.DONE, "")], at=T0 + 1, by="bob")
    assert await store.get_project("p1") == Project(
        "p1", created_at=T0, created_by="alice", task_counts={"pending": 1, "ready": 1, "done": 1}
    )


async def test_the_index_may_be_written_before_the_first_task(store: PostgresTaskStore) -> None:
    # Written first, the INDEX creates the project ...
    written = await store.set_project_index("p1", "# Goals\x00\n", at=T0, by="alice")
    assert written == Project(
        "p1",
        index_document="# Goals\ufffd\n",
        created_at=T0,
        created_by="alice",
        index_updated_at=T0,
        index_updated_by="alice",
    )
    assert await store.get_project("p1") == written
    # ... which its first task leaves as it is; a new INDEX replaces the old.
    await create(store, dataclasses.replace(new_task(created_at=T0 + 5), created_by="bob"))
    replaced = await store.set_project_index("p1", "", at=T0 + 9, by="carol")
    assert replaced == dataclasses.replace(
        written,
        index_document="",
        index_updated_at=T0 + 9,
        index_updated_by="carol",
        task_counts={"pending": 1},
    )
    assert await store.get_project("p1") == replaced
    # A project made by its first task has an empty INDEX, never written.
    await create(store, new_task("p2", created_at=T0 + 2))
    assert await store.get_project("p2") == Project(
        "p2", created_at=T0 + 2, created_by="alice", task_counts={"pending": 1}
    )


# --- tasks -------------------------------------------------------------------


async def test_a_task_round_trips_every_field(store: PostgresTaskStore, engine: AsyncEngine) -> None:
    conversation = TaskInput(
        messages=(
            ChatMessage("system", "be brief"),
            ChatMessage("user", "weather in Oslo?"),
            ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "weather", '{"city": "Oslo"}'),)),
            ChatMessage("tool", "4°C", tool_call_id="c1", name="weather"),
        )
    )
    task = Task(
        task_id=0,
        project_id="p1",
        name="forecast",
        status=TaskStatus.WAITING_APPROVAL,
        input=conversation,
        priority=2,
        role="planner",
        model="tiny",
        labels={"team": "a", "kind": "demo"},
        requires_approval=True,
        approved=False,
        context_budget=4096,
        status_reason="needs a look",
        hold_reason="",
        created_at=T0,
        created_by="alice",
        updated_at=T0 + 1.5,
        updated_by="bob",
        closed_at=None,
        closed_by="",
    )
    created = await store.create_task(task)
    assert created.task_id > 0
    assert created == dataclasses.replace(task, task_id=created.task_id)
    assert await store.get_task(created.task_id) == created
    assert await store.get_task(created.task_id + 1000) is None
    # A second task of the project leaves the project row as the first made it.
    await store.create_task(dataclasses.replace(new_task("p1"), created_by="carol"))
    async with engine.connect() as conn:
        projects = (await conn.execute(text("select id, created_by from projects"))).all()
    assert [tuple(row) for row in projects] == [("p1", "alice")]


async def test_text_postgres_cannot_store_is_replaced_in_a_task(store: PostgresTaskStore) -> None:
    """NUL and lone surrogates become U+FFFD in a task's text columns
    (StorableText) and jsonb values (the engine's JSON serializer), keys too."""
    task = dataclasses.replace(
        new_task(name="na\x00me"),
        input=TaskInput(prompt="do\x00 it", messages=(ChatMessage("user", "hi\x00 \ud800"),)),
        labels={"k\x00": "v\udc00"},
        hold_reason="held\x00",
        created_by="al\x00ice",
    )
    created = await store.create_task(task)
    stored = dataclasses.replace(
        task,
        task_id=created.task_id,
        name="na\ufffdme",
        input=TaskInput(prompt="do\ufffd it", messages=(ChatMessage("user", "hi\ufffd \ufffd"),)),
        labels={"k\ufffd": "v\ufffd"},
        hold_reason="held\ufffd",
        created_by="al\ufffdice",
    )
    assert created == stored
    assert await store.get_task(created.task_id) == stored
    await store.set_statuses([(created.task_id, TaskStatus.CANCELLED, "")], at=T0 + 1, by="b\x00b")
    closed = await store.get_task(created.task_id)
    assert closed is not None and (closed.updated_by, closed.closed_by) == ("b\ufffdb", "b\ufffdb")
    # A surrogate pair written as two code points is two lone surrogates
    # (the API refuses such text before it gets here).
    paired = await store.create_task(new_task(name="\ud83d\ude00"))
    assert paired.name == "\ufffd\ufffd"


async def test_list_tasks_orders_by_priority_then_creation_and_filters(store: PostgresTaskStore) -> None:
    late_p0, early_p1, early_p0, tie_a, tie_b = await create(
        store,
        new_task(name="late-p0", priority=0, created_at=T0 + 10),
        new_task(name="early-p1", priority=1, created_at=T0),
        new_task(name="early-p0", priority=0, created_at=T0 + 1),
        new_task(name="tie-a", priority=0, created_at=T0 + 20),
        new_task(name="tie-b", priority=0, created_at=T0 + 20),
    )
    await create(store, new_task("other"))
    listed = await store.list_tasks("p1")
    assert [t.task_id for t in listed] == [early_p0, late_p0, tie_a, tie_b, early_p1]
    await store.set_statuses([(tie_a, TaskStatus.READY, "")], at=T0 + 30, by="orchestrator")
    assert [t.task_id for t in await store.list_tasks("p1", status=TaskStatus.READY)] == [tie_a]
    assert await store.list_tasks("nobody") == []


async def test_update_task_writes_the_mutable_fields(store: PostgresTaskStore) -> None:
    (task_id,) = await create(store, new_task())
    stored = await store.get_task(task_id)
    assert stored is not None
    changed = dataclasses.replace(
        stored,
        name="ignored",
        input=TaskInput(prompt="ignored"),
        status=TaskStatus.DONE,
        priority=3,
        labels={"x": "y"},
        requires_approval=True,
        approved=True,
        context_budget=512,
        status_reason="done by hand",
        hold_reason="was held",
        updated_at=T0 + 5,
        updated_by="bob",
        closed_at=T0 + 5,
        closed_by="bob",
    )
    updated = await store.update_task(changed)
    # name and input are not mutable: they stay as created.
    assert updated == dataclasses.replace(changed, name=stored.name, input=stored.input)
    assert await store.get_task(task_id) == updated
    with pytest.raises(NotFound) as missing:
        await store.update_task(dataclasses.replace(changed, task_id=task_id + 1000))
    assert missing.value.reason == "TASK_NOT_FOUND"


async def test_set_statuses_changes_many_tasks_in_one_call(store: PostgresTaskStore) -> None:
    a, b, c = await create(store, new_task(name="a"), new_task(name="b"), new_task(name="c"))
    await store.set_statuses(
        [
            (a, TaskStatus.READY, ""),
            (b, TaskStatus.BLOCKED, "task 3 waits for 1, which \x00failed"),
            (c, TaskStatus.CANCELLED, "not needed"),
        ],
        at=T0 + 7,
        by="orchestrator",
    )
    got = {t.task_id: t for t in await store.list_tasks("p1")}
    assert got[a].status is TaskStatus.READY and got[a].closed_at is None
    assert got[b].status is TaskStatus.BLOCKED
    assert got[b].status_reason == "task 3 waits for 1, which \ufffdfailed"
    assert got[c].status is TaskStatus.CANCELLED and got[c].status_reason == "not needed"
    assert all(t.updated_at == T0 + 7 and t.updated_by == "orchestrator" for t in got.values())
    assert (got[c].closed_at, got[c].closed_by) == (T0 + 7, "orchestrator")
    # A closed task changing to another closed status keeps its first close ...
    await store.set_statuses([(c, TaskStatus.FAILED, "x")], at=T0 + 8, by="bob")
    again = await store.get_task(c)
    assert again is not None and (again.closed_at, again.closed_by) == (T0 + 7, "orchestrator")
    # ... and one that opens again is no longer closed.
    await store.set_statuses([(c, TaskStatus.READY, "")], at=T0 + 9, by="bob")
    reopened = await store.get_task(c)
    assert reopened is not None and (reopened.closed_at, reopened.closed_by) == (None, "")
    await store.set_statuses([], at=T0, by="nobody")


# --- notes -------------------------------------------------------------------


async def test_notes_are_appended_in_order_and_nul_is_replaced(store: PostgresTaskStore) -> None:
    a, b = await create(store, new_task(name="a"), new_task(name="b"))
    first = await store.add_note(a, "alice", "first", T0 + 1)
    second = await store.add_note(a, "planner", "with a NUL\x00 and \ud800", T0 + 2)
    await store.add_note(b, "bob", "elsewhere", T0 + 3)
    assert second.note_id > first.note_id and second.text == "with a NUL\ufffd and \ufffd"
    notes = await store.list_notes(a)
    assert [(n.agent, n.text, n.created_at) for n in notes] == [
        ("alice", "first", T0 + 1),
        ("planner", "with a NUL\ufffd and \ufffd", T0 + 2),
    ]
    assert notes == [first, second]
    assert await store.list_notes(b + 1000) == []


# --- links -------------------------------------------------------------------


async def test_links_are_unique_listed_both_ways_and_deleted(store: PostgresTaskStore) -> None:
    a, b, c = await create(store, new_task(name="a"), new_task(name="b"), new_task(name="c"))
    (elsewhere,) = await create(store, new_task("p2"))
    a_requires_b = Link(a, b, LinkKind.REQUIRES, T0 + 1, "alice")
    assert await store.add_link(a_requires_b)
    assert not await store.add_link(dataclasses.replace(a_requires_b, created_by="bob", created_at=T0 + 9))
    a_refers_b = Link(a, b, LinkKind.REFERS, T0 + 2, "alice")
    c_requires_a = Link(c, a, LinkKind.REQUIRES, T0 + 3, "bob")
    assert await store.add_link(a_refers_b)
    assert await store.add_link(c_requires_a)
    assert await store.add_link(Link(elsewhere, a, LinkKind.RELATES_TO, T0 + 4, "carol"))

    outgoing, incoming = await store.list_links(a)
    assert outgoing == [a_requires_b, a_refers_b]
    assert [link.from_task for link in incoming] == [c, elsewhere]
    assert await store.list_links(b) == ([], [a_requires_b, a_refers_b])
    assert await store.project_links("p1") == [a_requires_b, a_refers_b, c_requires_a]
    assert await store.project_links("p1", LinkKind.REQUIRES) == [a_requires_b, c_requires_a]

    assert await store.delete_link(a, b, LinkKind.REQUIRES)
    assert not await store.delete_link(a, b, LinkKind.REQUIRES)
    assert await store.project_links("p1") == [a_refers_b, c_requires_a]
    # Deleted, the link may be added again.
    assert await store.add_link(a_requires_b)


# --- context -----------------------------------------------------------------


async def test_an_override_is_replaced_whole(store: PostgresTaskStore) -> None:
    (task_id,) = await create(store, new_task())
    assert await store.get_override(task_id) is None
    first = ContextOverride(
        task_id, pins=("task:9", "memory:abc"), excludes=("task:4",), set_by="alice", set_at=T0
    )
    await store.set_override(first)
    assert await store.get_override(task_id) == first
    second = ContextOverride(task_id, pins=(), excludes=("memory:abc",), set_by="bob", set_at=T0 + 1)
    await store.set_override(second)
    assert await store.get_override(task_id) == second


async def test_a_snapshot_is_stored_once(store: PostgresTaskStore) -> None:
    items = (
        {"source": "task:1", "tier": "PINNED", "tokens": 12, "text": "out\x00put"},
        {"source": "memory:m1", "tier": "RETRIEVED", "tokens": 3, "text": "fact"},
    )
    snap = ContextSnapshot("sha256:abc", items, 1000, "tiktoken:cl100k", True, "prompt\x00 text")
    assert await store.put_snapshot(snap)
    assert not await store.put_snapshot(dataclasses.replace(snap, prompt="other", budget=1))
    stored = await store.get_snapshot("sha256:abc")
    assert stored == dataclasses.replace(
        snap,
        items=({**items[0], "text": "out\ufffdput"}, items[1]),
        prompt="prompt\ufffd text",
    )
    assert await store.get_snapshot("sha256:none") is None


# --- runs --------------------------------------------------------------------


async def test_runs_are_created_finished_and_listed_newest_first(store: PostgresTaskStore) -> None:
    a, b = await create(store, new_task(name="a"), new_task(name="b"))
    (other,) = await create(store, new_task("p2"))
    context_hash = await snapshot(store)
    started = TaskRun(
        run_id=0,
        task_id=a,
        project_id="p1",
        status=RunStatus.RUNNING,
        context_hash=context_hash,
        model="tiny",
        sampling={"max_tokens": 64, "temperature": 0.0, "seed": 7},
        started_at=T0,
        started_by="alice",
    )
    run = await store.create_run(started)
    assert run.run_id > 0 and run == dataclasses.replace(started, run_id=run.run_id)
    assert run.job_id == "" and run.rerun_of == 0 and run.ended_at is None

    job_id = str(uuid.uuid4())
    finished = dataclasses.replace(
        run,
        status=RunStatus.DONE,
        job_id=job_id,
        model="tiny-q4",
        engine="vllm",
        weights_digest="sha256:w",
        routing_report={"chosen_target": "tiny-q4", "fallbacks": []},
        input_tokens=120,
        output_tokens=33,
        cost=0.0125,
        output="an answer with a NUL\x00",
        end_reason="STOP",
        end_message="stopped\x00",
        ended_at=T0 + 4.5,
    )
    await store.finish_run(finished)
    assert await store.get_run(run.run_id) == dataclasses.replace(
        finished, output="an answer with a NUL\ufffd", end_message="stopped\ufffd"
    )
    # finish_run leaves what was set at creation.
    moved = dataclasses.replace(finished, sampling={}, started_by="mallory", started_at=0.0)
    await store.finish_run(moved)
    again = await store.get_run(run.run_id)
    assert again is not None and again.sampling == started.sampling and again.started_by == "alice"

    rerun = await store.create_run(dataclasses.replace(started, rerun_of=run.run_id, started_at=T0 + 10))
    assert rerun.rerun_of == run.run_id
    of_b = await store.create_run(dataclasses.replace(started, task_id=b, context_hash=""))
    assert of_b.context_hash == ""
    of_other = await store.create_run(dataclasses.replace(started, task_id=other, project_id="p2"))

    assert [r.run_id for r in await store.list_runs(task_id=a)] == [rerun.run_id, run.run_id]
    assert [r.run_id for r in await store.list_runs(project_id="p1")] == [
        of_b.run_id,
        rerun.run_id,
        run.run_id,
    ]
    assert [r.run_id for r in await store.list_runs(project_id="p1", limit=1)] == [of_b.run_id]
    assert [r.run_id for r in await store.list_runs(project_id="p2", task_id=a)] == []
    assert (await store.list_runs())[0].run_id == of_other.run_id
    assert await store.get_run(of_other.run_id + 1000) is None
    with pytest.raises(NotFound) as missing:
        await store.finish_run(dataclasses.replace(finished, run_id=of_other.run_id + 1000))
    assert missing.value.reason == "RUN_NOT_FOUND"
