"""The task store on Postgres: projects, tasks, links, notes, context
overrides, snapshots and runs, as SQLAlchemy Core statements over asyncpg.

Single statements run in autocommit; a write of several statements is one
transaction. Times are epoch seconds in the domain and timestamptz here.
Empty values of the domain map to NULL where a column is a reference: a
run's ``job_id`` "" (the column is a uuid, so a job id must be a UUID
string), ``rerun_of`` 0 and ``context_hash`` "".

PostgreSQL stores neither NUL nor lone surrogates in text or jsonb; the
columns that hold a person's or a model's words are
:class:`~orchestratord.adapters.storable.StorableText` and the engine's JSON
serializer makes every jsonb value storable (build the engine with
:func:`orchestratord.adapters.postgres.create_engine`), so this module writes
values as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Row,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from hearth.chat import ChatMessage
from hearth.errors import NotFound
from orchestratord.adapters.schema import (
    context_overrides,
    context_snapshots,
    projects,
    task_links,
    task_notes,
    task_runs,
    tasks,
)
from orchestratord.adapters.storable import StorableText
from orchestratord.domain.tasks import (
    ContextOverride,
    ContextSnapshot,
    Link,
    LinkKind,
    Project,
    RunStatus,
    Task,
    TaskInput,
    TaskNote,
    TaskRun,
    TaskStatus,
)


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def _maybe_ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else _ts(epoch)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


# --- rows <-> domain ---------------------------------------------------------


def _input_json(task_input: TaskInput) -> dict[str, Any]:
    return {"prompt": task_input.prompt, "messages": [m.to_json() for m in task_input.messages]}


def _task_input(data: Mapping[str, Any]) -> TaskInput:
    return TaskInput(
        prompt=str(data.get("prompt", "")),
        messages=tuple(ChatMessage.from_json(m) for m in data.get("messages") or ()),
    )


_MUTABLE_TASK_COLUMNS = (
    "status",
    "priority",
    "labels",
    "requires_approval",
    "approved",
    "context_budget",
    "status_reason",
    "hold_reason",
    "updated_at",
    "updated_by",
    "closed_at",
    "closed_by",
)


def _mutable_task_values(task: Task) -> dict[str, Any]:
    """The columns :meth:`PostgresTaskStore.update_task` writes."""
    return {
        "status": task.status.value,
        "priority": task.priority,
        "labels": dict(task.labels),
        "requires_approval": task.requires_approval,
        "approved": task.approved,
        "context_budget": task.context_budget,
        "status_reason": task.status_reason,
        "hold_reason": task.hold_reason,
        "updated_at": _ts(task.updated_at),
        "updated_by": task.updated_by,
        "closed_at": _maybe_ts(task.closed_at),
        "closed_by": task.closed_by,
    }


def _task_values(task: Task) -> dict[str, Any]:
    return {
        **_mutable_task_values(task),
        "project_id": task.project_id,
        "name": task.name,
        "input": _input_json(task.input),
        "role": task.role,
        "model": task.model,
        "created_at": _ts(task.created_at),
        "created_by": task.created_by,
    }


def _project(rows: Sequence[Row[Any]]) -> Project:
    """A project from the rows of :data:`_GET_PROJECT` (at least one)."""
    first = rows[0]
    return Project(
        project_id=first.id,
        index_document=first.index_document,
        created_at=first.created_at.timestamp(),
        created_by=first.created_by,
        index_updated_at=_epoch(first.index_updated_at),
        index_updated_by=first.index_updated_by,
        task_counts={row.status: row.task_count for row in rows if row.status is not None},
    )


def _task(row: Row[Any]) -> Task:
    return Task(
        task_id=row.id,
        project_id=row.project_id,
        name=row.name,
        status=TaskStatus(row.status),
        input=_task_input(row.input),
        priority=row.priority,
        role=row.role,
        model=row.model,
        labels=dict(row.labels),
        requires_approval=row.requires_approval,
        approved=row.approved,
        context_budget=row.context_budget,
        status_reason=row.status_reason,
        hold_reason=row.hold_reason,
        created_at=row.created_at.timestamp(),
        created_by=row.created_by,
        updated_at=row.updated_at.timestamp(),
        updated_by=row.updated_by,
        closed_at=_epoch(row.closed_at),
        closed_by=row.closed_by,
    )


def _note(row: Row[Any]) -> TaskNote:
    return TaskNote(row.id, row.task_id, row.agent, row.text, row.created_at.timestamp())


def _link(row: Row[Any]) -> Link:
    return Link(row.from_task, row.to_task, LinkKind(row.kind), row.created_at.timestamp(), row.created_by)


def _override(row: Row[Any]) -> ContextOverride:
    return ContextOverride(
        task_id=row.task_id,
        pins=tuple(row.pins),
        excludes=tuple(row.excludes),
        set_by=row.set_by,
        set_at=row.set_at.timestamp(),
    )


def _snapshot(row: Row[Any]) -> ContextSnapshot:
    return ContextSnapshot(
        context_hash=row.hash,
        items=tuple(dict(item) for item in row.items),
        budget=row.budget,
        counter=row.counter,
        exact=row.exact,
        prompt=row.prompt,
    )


_FINISHED_RUN_COLUMNS = (
    "status",
    "job_id",
    "model",
    "engine",
    "weights_digest",
    "routing_report",
    "input_tokens",
    "output_tokens",
    "cost",
    "output",
    "end_reason",
    "end_message",
    "ended_at",
)


def _finished_run_values(run: TaskRun) -> dict[str, Any]:
    """The columns :meth:`PostgresTaskStore.finish_run` writes."""
    return {
        "status": run.status.value,
        "job_id": run.job_id or None,
        "model": run.model,
        "engine": run.engine,
        "weights_digest": run.weights_digest,
        "routing_report": dict(run.routing_report),
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost": run.cost,
        "output": run.output,
        "end_reason": run.end_reason,
        "end_message": run.end_message,
        "ended_at": _maybe_ts(run.ended_at),
    }


def _run_values(run: TaskRun) -> dict[str, Any]:
    return {
        **_finished_run_values(run),
        "task_id": run.task_id,
        "project_id": run.project_id,
        "context_hash": run.context_hash or None,
        "rerun_of": run.rerun_of or None,
        "sampling": dict(run.sampling),
        "started_at": _ts(run.started_at),
        "started_by": run.started_by,
    }


def _run(row: Row[Any]) -> TaskRun:
    return TaskRun(
        run_id=row.id,
        task_id=row.task_id,
        project_id=row.project_id,
        status=RunStatus(row.status),
        context_hash=row.context_hash or "",
        job_id=row.job_id or "",
        rerun_of=row.rerun_of or 0,
        model=row.model,
        engine=row.engine,
        weights_digest=row.weights_digest,
        sampling=dict(row.sampling),
        routing_report=dict(row.routing_report),
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cost=row.cost,
        output=row.output,
        end_reason=row.end_reason,
        end_message=row.end_message,
        started_at=row.started_at.timestamp(),
        ended_at=_epoch(row.ended_at),
        started_by=row.started_by,
    )


# --- statements, built once; SQLAlchemy caches their compiled form ------------

_INSERT_PROJECT = pg_insert(projects).on_conflict_do_nothing(index_elements=[projects.c.id])
_UPSERT_PROJECT = pg_insert(projects)
_SET_PROJECT_INDEX = _UPSERT_PROJECT.on_conflict_do_update(
    index_elements=[projects.c.id],
    set_={
        name: _UPSERT_PROJECT.excluded[name]
        for name in ("index_document", "index_updated_at", "index_updated_by")
    },
)
#: One row per status the project's tasks have (one row, status NULL, when it
#: has none); projects.id is the key, so its columns may be selected ungrouped.
_GET_PROJECT = (
    select(projects, tasks.c.status, func.count(tasks.c.id).label("task_count"))
    .select_from(projects.outerjoin(tasks, tasks.c.project_id == projects.c.id))
    .where(projects.c.id == bindparam("project_id"))
    .group_by(projects.c.id, tasks.c.status)
)
_INSERT_TASK = tasks.insert().returning(*tasks.c)
_GET_TASK = select(tasks).where(tasks.c.id == bindparam("task_id"))
_LIST_TASKS = (
    select(tasks)
    .where(tasks.c.project_id == bindparam("project_id"))
    .order_by(tasks.c.priority, tasks.c.created_at, tasks.c.id)
)
_LIST_TASKS_BY_STATUS = _LIST_TASKS.where(tasks.c.status == bindparam("status"))
_UPDATE_TASK = (
    update(tasks)
    .where(tasks.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}", type_=tasks.c[name].type) for name in _MUTABLE_TASK_COLUMNS})
    .returning(*tasks.c)
)
_AT = bindparam("b_at", type_=TIMESTAMP(timezone=True))
_BY = bindparam("b_by", type_=StorableText())
_CLOSING = bindparam("b_closing", type_=Boolean())
#: A closed status keeps the first close's time and agent; an open one clears them.
_SET_STATUS = (
    update(tasks)
    .where(tasks.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        status_reason=bindparam("b_reason", type_=tasks.c.status_reason.type),
        updated_at=_AT,
        updated_by=_BY,
        closed_at=case((_CLOSING, func.coalesce(tasks.c.closed_at, _AT)), else_=null()),
        closed_by=case(
            (and_(_CLOSING, tasks.c.closed_at.is_(None)), _BY),
            (_CLOSING, tasks.c.closed_by),
            else_="",
        ),
    )
)
_INSERT_NOTE = task_notes.insert().returning(*task_notes.c)
_LIST_NOTES = select(task_notes).where(task_notes.c.task_id == bindparam("task_id")).order_by(task_notes.c.id)
_LINK_KEY = (task_links.c.from_task, task_links.c.to_task, task_links.c.kind)
_INSERT_LINK = (
    pg_insert(task_links).on_conflict_do_nothing(index_elements=list(_LINK_KEY)).returning(task_links.c.kind)
)
_DELETE_LINK = (
    delete(task_links)
    .where(
        task_links.c.from_task == bindparam("from_task"),
        task_links.c.to_task == bindparam("to_task"),
        task_links.c.kind == bindparam("kind"),
    )
    .returning(task_links.c.kind)
)
_TASK_LINKS = (
    select(task_links)
    .where(or_(task_links.c.from_task == bindparam("task_id"), task_links.c.to_task == bindparam("task_id")))
    .order_by(task_links.c.created_at, *_LINK_KEY)
)
#: Links whose from task is in the project.
_PROJECT_LINKS = (
    select(task_links)
    .join(tasks, tasks.c.id == task_links.c.from_task)
    .where(tasks.c.project_id == bindparam("project_id"))
    .order_by(task_links.c.created_at, *_LINK_KEY)
)
_PROJECT_LINKS_OF_KIND = _PROJECT_LINKS.where(task_links.c.kind == bindparam("kind"))
_UPSERT_OVERRIDE = pg_insert(context_overrides)
_SET_OVERRIDE = _UPSERT_OVERRIDE.on_conflict_do_update(
    index_elements=[context_overrides.c.task_id],
    set_={name: _UPSERT_OVERRIDE.excluded[name] for name in ("pins", "excludes", "set_by", "set_at")},
)
_GET_OVERRIDE = select(context_overrides).where(context_overrides.c.task_id == bindparam("task_id"))
_PUT_SNAPSHOT = (
    pg_insert(context_snapshots)
    .on_conflict_do_nothing(index_elements=[context_snapshots.c.hash])
    .returning(context_snapshots.c.hash)
)
_GET_SNAPSHOT = select(context_snapshots).where(context_snapshots.c.hash == bindparam("hash"))
_INSERT_RUN = task_runs.insert().returning(*task_runs.c)
_FINISH_RUN = (
    update(task_runs)
    .where(task_runs.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}", type_=task_runs.c[name].type) for name in _FINISHED_RUN_COLUMNS})
    .returning(task_runs.c.id)
)
#: The same update for many runs (executemany takes no RETURNING).
_FINISH_RUN_MANY = (
    update(task_runs)
    .where(task_runs.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}", type_=task_runs.c[name].type) for name in _FINISHED_RUN_COLUMNS})
)
_GET_RUN = select(task_runs).where(task_runs.c.id == bindparam("run_id"))
_PROJECT_OVERRIDES = (
    select(context_overrides)
    .join(tasks, tasks.c.id == context_overrides.c.task_id)
    .where(tasks.c.project_id == bindparam("project_id"))
)


#: The latest successful run's output of each task, with the task's name.
_LATEST_OUTPUTS = (
    select(task_runs.c.task_id, tasks.c.name, task_runs.c.output)
    .distinct(task_runs.c.task_id)
    .join(tasks, tasks.c.id == task_runs.c.task_id)
    .where(task_runs.c.task_id.in_(bindparam("task_ids", expanding=True)), task_runs.c.status == "done")
    .order_by(task_runs.c.task_id, task_runs.c.id.desc())
)


def _status_params(task_id: int, status: TaskStatus, reason: str, at: float, by: str) -> dict[str, Any]:
    return {
        "b_id": task_id,
        "b_status": status.value,
        "b_reason": reason,
        "b_at": _ts(at),
        "b_by": by,
        "b_closing": status.is_closed,
    }


def _snapshot_values(snapshot: ContextSnapshot) -> dict[str, Any]:
    return {
        "hash": snapshot.context_hash,
        "items": list(snapshot.items),
        "budget": snapshot.budget,
        "counter": snapshot.counter,
        "exact": snapshot.exact,
        "prompt": snapshot.prompt,
    }


def _prefixed(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters for a statement whose bind names are ``b_<column>``."""
    return {f"b_{name}": value for name, value in values.items()}


def _list_runs(project_id: str, task_id: int, limit: int) -> Select[Any]:
    query = select(task_runs).order_by(task_runs.c.id.desc()).limit(bindparam("limit", limit))
    if project_id:
        query = query.where(task_runs.c.project_id == bindparam("project_id", project_id))
    if task_id:
        query = query.where(task_runs.c.task_id == bindparam("task_id", task_id))
    return query


class PostgresTaskStore:
    """:class:`orchestratord.domain.ports.TaskStore` on Postgres.

    ``update_task`` and ``finish_run`` raise :class:`hearth.errors.NotFound`
    (TASK_NOT_FOUND, RUN_NOT_FOUND) for an unknown id; writes that name a
    missing task, project or snapshot fail on the foreign key
    (:class:`sqlalchemy.exc.IntegrityError`): the domain checks first.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Single statements run without BEGIN/COMMIT round trips.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    # --- projects

    async def get_project(self, project_id: str) -> Project | None:
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(_GET_PROJECT, {"project_id": project_id})).all()
        return _project(rows) if rows else None

    async def set_project_index(self, project_id: str, text: str, *, at: float, by: str) -> Project:
        """Creates the project (created_at/by ``at``/``by``) when it is new."""
        when = _ts(at)
        values = {
            "id": project_id,
            "created_at": when,
            "created_by": by,
            "index_document": text,
            "index_updated_at": when,
            "index_updated_by": by,
        }
        async with self._engine.begin() as conn:
            await conn.execute(_SET_PROJECT_INDEX, values)
            rows = (await conn.execute(_GET_PROJECT, {"project_id": project_id})).all()
        return _project(rows)

    # --- tasks

    async def create_task(self, task: Task) -> Task:
        project = {"id": task.project_id, "created_at": _ts(task.created_at), "created_by": task.created_by}
        async with self._engine.begin() as conn:
            await conn.execute(_INSERT_PROJECT, project)
            row = (await conn.execute(_INSERT_TASK, _task_values(task))).one()
        return _task(row)

    async def get_task(self, task_id: int) -> Task | None:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_GET_TASK, {"task_id": task_id})).first()
        return None if row is None else _task(row)

    async def list_tasks(self, project_id: str, *, status: TaskStatus | None = None) -> list[Task]:
        async with self._autocommit.connect() as conn:
            if status is None:
                result = await conn.execute(_LIST_TASKS, {"project_id": project_id})
            else:
                result = await conn.execute(
                    _LIST_TASKS_BY_STATUS, {"project_id": project_id, "status": status.value}
                )
            return [_task(row) for row in result]

    async def update_task(self, task: Task) -> Task:
        params = _prefixed(_mutable_task_values(task))
        params["b_id"] = task.task_id
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_UPDATE_TASK, params)).first()
        if row is None:
            raise NotFound(
                f"no task {task.task_id}", reason="TASK_NOT_FOUND", metadata={"task_id": str(task.task_id)}
            )
        return _task(row)

    async def set_statuses(
        self, changes: Sequence[tuple[int, TaskStatus, str]], *, at: float, by: str
    ) -> None:
        """Also sets closed_at/by: to ``at``/``by`` when a task closes (a
        task already closed keeps its first close), cleared when it reopens.
        Unknown task ids are skipped."""
        if not changes:
            return
        params = [_status_params(task_id, status, reason, at, by) for task_id, status, reason in changes]
        async with self._engine.begin() as conn:
            await conn.execute(_SET_STATUS, params)

    # --- notes

    async def add_note(self, task_id: int, agent: str, text: str, at: float) -> TaskNote:
        values = {"task_id": task_id, "agent": agent, "text": text, "created_at": _ts(at)}
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_INSERT_NOTE, values)).one()
        return _note(row)

    async def list_notes(self, task_id: int) -> list[TaskNote]:
        """Oldest first."""
        async with self._autocommit.connect() as conn:
            return [_note(row) for row in await conn.execute(_LIST_NOTES, {"task_id": task_id})]

    # --- links

    async def add_link(self, link: Link) -> bool:
        values = {
            "from_task": link.from_task,
            "to_task": link.to_task,
            "kind": link.kind.value,
            "created_at": _ts(link.created_at),
            "created_by": link.created_by,
        }
        async with self._autocommit.connect() as conn:
            return (await conn.execute(_INSERT_LINK, values)).first() is not None

    async def delete_link(self, from_task: int, to_task: int, kind: LinkKind) -> bool:
        """True when the link existed."""
        params = {"from_task": from_task, "to_task": to_task, "kind": kind.value}
        async with self._autocommit.connect() as conn:
            return (await conn.execute(_DELETE_LINK, params)).first() is not None

    async def list_links(self, task_id: int) -> tuple[list[Link], list[Link]]:
        """Each list oldest first; a link from a task to itself is in both."""
        async with self._autocommit.connect() as conn:
            links = [_link(row) for row in await conn.execute(_TASK_LINKS, {"task_id": task_id})]
        outgoing = [link for link in links if link.from_task == task_id]
        incoming = [link for link in links if link.to_task == task_id]
        return outgoing, incoming

    async def project_links(self, project_id: str, kind: LinkKind | None = None) -> list[Link]:
        """The links from the project's tasks, oldest first."""
        async with self._autocommit.connect() as conn:
            if kind is None:
                result = await conn.execute(_PROJECT_LINKS, {"project_id": project_id})
            else:
                result = await conn.execute(
                    _PROJECT_LINKS_OF_KIND, {"project_id": project_id, "kind": kind.value}
                )
            return [_link(row) for row in result]

    # --- context

    async def set_override(self, override: ContextOverride) -> None:
        """Replaces the task's override, if any."""
        values = {
            "task_id": override.task_id,
            "pins": list(override.pins),
            "excludes": list(override.excludes),
            "set_by": override.set_by,
            "set_at": _ts(override.set_at),
        }
        async with self._autocommit.connect() as conn:
            await conn.execute(_SET_OVERRIDE, values)

    async def get_override(self, task_id: int) -> ContextOverride | None:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_GET_OVERRIDE, {"task_id": task_id})).first()
        return None if row is None else _override(row)

    async def put_snapshot(self, snapshot: ContextSnapshot) -> bool:
        async with self._autocommit.connect() as conn:
            return (await conn.execute(_PUT_SNAPSHOT, _snapshot_values(snapshot))).first() is not None

    async def get_snapshot(self, context_hash: str) -> ContextSnapshot | None:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_GET_SNAPSHOT, {"hash": context_hash})).first()
        return None if row is None else _snapshot(row)

    # --- runs

    async def create_run(self, run: TaskRun) -> TaskRun:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_INSERT_RUN, _run_values(run))).one()
        return _run(row)

    async def start_run(
        self, snapshot: ContextSnapshot | None, run: TaskRun, *, by: str, mark_running: bool = True
    ) -> TaskRun:
        """One transaction: the snapshot (unless stored), the run, and (with
        ``mark_running``) its task RUNNING."""
        async with self._engine.begin() as conn:
            if snapshot is not None:
                await conn.execute(_PUT_SNAPSHOT, _snapshot_values(snapshot))
            row = (await conn.execute(_INSERT_RUN, _run_values(run))).one()
            if mark_running:
                status = _status_params(run.task_id, TaskStatus.RUNNING, "", run.started_at, by)
                await conn.execute(_SET_STATUS, status)
        return _run(row)

    async def end_runs(
        self,
        ends: Sequence[tuple[TaskRun, TaskStatus, str]],
        changes: Sequence[tuple[int, TaskStatus, str]] = (),
        *,
        at: float,
        by: str,
    ) -> None:
        """One transaction: each run's end (as finish_run) with its task's
        status and reason, then the other tasks' ``changes``."""
        runs = []
        for run, _, _ in ends:
            params = _prefixed(_finished_run_values(run))
            params["b_id"] = run.run_id
            runs.append(params)
        statuses = [_status_params(run.task_id, status, reason, at, by) for run, status, reason in ends]
        statuses.extend(
            _status_params(task_id, status, reason, at, by) for task_id, status, reason in changes
        )
        async with self._engine.begin() as conn:
            if runs:
                await conn.execute(_FINISH_RUN_MANY, runs)
            if statuses:
                await conn.execute(_SET_STATUS, statuses)

    async def project_overrides(self, project_id: str) -> dict[int, ContextOverride]:
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(_PROJECT_OVERRIDES, {"project_id": project_id})).all()
        return {row.task_id: _override(row) for row in rows}

    async def latest_outputs(self, task_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        if not task_ids:
            return {}
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(_LATEST_OUTPUTS, {"task_ids": list(task_ids)})).all()
        return {row.task_id: (row.name, row.output) for row in rows}

    async def finish_run(self, run: TaskRun) -> None:
        """Writes status, job_id, model, engine, weights_digest,
        routing_report, tokens, cost, output, end reason and message, and
        ended_at; the rest stays as created."""
        params = _prefixed(_finished_run_values(run))
        params["b_id"] = run.run_id
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_FINISH_RUN, params)).first()
        if row is None:
            raise NotFound(
                f"no run {run.run_id}", reason="RUN_NOT_FOUND", metadata={"run_id": str(run.run_id)}
            )

    async def get_run(self, run_id: int) -> TaskRun | None:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_GET_RUN, {"run_id": run_id})).first()
        return None if row is None else _run(row)

    async def list_runs(self, *, project_id: str = "", task_id: int = 0, limit: int = 100) -> list[TaskRun]:
        """Newest first; filtered by whichever of project and task is given
        (all runs when neither is)."""
        async with self._autocommit.connect() as conn:
            return [_run(row) for row in await conn.execute(_list_runs(project_id, task_id, limit))]
