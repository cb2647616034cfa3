"""The task store on Postgres: projects, tasks, links, notes, context
overrides, snapshots, runs, plans and the work event log, as SQLAlchemy Core
statements over asyncpg.

Reads are single statements in autocommit. Every write is one transaction
that also appends its work events (:mod:`orchestratord.domain.events`): the
entity's row after the change, read back in the same transaction, numbered
from the one-row ``work_event_sequence`` counter, whose row lock holds the
next writer until this one commits, so numbers follow commit order without
gaps (a reader of ``--since N`` never misses a later-committed lower
number). Once a write has committed, ``on_committed`` gets its events (the
NATS relay's cue). Times are epoch seconds in the domain and timestamptz here.
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

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    Row,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hearth.chat import ChatMessage
from hearth.errors import NotFound
from orchestratord.adapters.schema import (
    context_overrides,
    context_snapshots,
    plan_attempts,
    plans,
    projects,
    task_links,
    task_notes,
    task_runs,
    tasks,
    work_event_sequence,
    work_events,
)
from orchestratord.adapters.storable import StorableText
from orchestratord.domain.events import ENTITY_KEYS, NewEvent, WorkEvent, WorkViews, entity_key
from orchestratord.domain.plans import AttemptStatus, Plan, PlanAttempt, PlanDraft, PlanStatus
from orchestratord.domain.stats import Grouping, StatsQuery, StatsReport, StatsRow
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
    "time_to_first_token_seconds",
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
        "time_to_first_token_seconds": run.time_to_first_token,
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
        "role": run.role,
        "system_prompt": run.system_prompt,
        "escalated_from": run.escalated_from or None,
        "escalation": dict(run.escalation),
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
        role=row.role,
        system_prompt=row.system_prompt,
        escalated_from=row.escalated_from or 0,
        escalation=dict(row.escalation),
        time_to_first_token=row.time_to_first_token_seconds,
    )


# --- statements, built once; SQLAlchemy caches their compiled form ------------

_INSERT_PROJECT = (
    pg_insert(projects).on_conflict_do_nothing(index_elements=[projects.c.id]).returning(*projects.c)
)
_PROJECT_ROW = select(projects).where(projects.c.id == bindparam("project_id"))
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
    pg_insert(task_links).on_conflict_do_nothing(index_elements=list(_LINK_KEY)).returning(*task_links.c)
)
_DELETE_LINK = (
    delete(task_links)
    .where(
        task_links.c.from_task == bindparam("from_task"),
        task_links.c.to_task == bindparam("to_task"),
        task_links.c.kind == bindparam("kind"),
    )
    .returning(*task_links.c)
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
).returning(*context_overrides.c)
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
    .returning(*task_runs.c)
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


#: The latest successful run of each task.
_LATEST_DONE_RUNS = (
    select(task_runs)
    .distinct(task_runs.c.task_id)
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


# --- plans -----------------------------------------------------------------


def _plan_values(plan: Plan) -> dict[str, Any]:
    return {
        "project_id": plan.project_id,
        "goal": plan.goal,
        "status": plan.status.value,
        "draft": plan.draft.to_json(),
        "revision": plan.revision,
        "reason": plan.reason,
        "model": plan.model,
        "created_at": _ts(plan.created_at),
        "created_by": plan.created_by,
        "updated_at": _ts(plan.updated_at),
        "updated_by": plan.updated_by,
        "decided_at": _maybe_ts(plan.decided_at),
        "decided_by": plan.decided_by,
        "task_ids": {key: task_id for key, task_id in plan.task_ids.items()},
        "index_task_id": plan.index_task_id or None,
    }


def _plan(row: Row[Any], attempts: Sequence[PlanAttempt] = ()) -> Plan:
    return Plan(
        plan_id=row.id,
        project_id=row.project_id,
        goal=row.goal,
        status=PlanStatus(row.status),
        draft=PlanDraft.from_json(row.draft or {}),
        revision=row.revision,
        reason=row.reason,
        model=row.model,
        created_at=row.created_at.timestamp(),
        created_by=row.created_by,
        updated_at=row.updated_at.timestamp(),
        updated_by=row.updated_by,
        decided_at=_epoch(row.decided_at),
        decided_by=row.decided_by,
        task_ids={str(k): int(v) for k, v in (row.task_ids or {}).items()},
        index_task_id=row.index_task_id or 0,
        attempts=tuple(attempts),
    )


def _attempt_values(attempt: PlanAttempt) -> dict[str, Any]:
    return {
        "plan_id": attempt.plan_id,
        "attempt": attempt.attempt,
        "status": attempt.status.value,
        "job_id": attempt.job_id or None,
        "model": attempt.model,
        "engine": attempt.engine,
        "role": attempt.role,
        "output": attempt.output,
        "errors": list(attempt.errors),
        "input_tokens": attempt.input_tokens,
        "output_tokens": attempt.output_tokens,
        "cost": attempt.cost,
        "time_to_first_token_seconds": attempt.time_to_first_token,
        "started_at": _ts(attempt.started_at),
        "ended_at": _maybe_ts(attempt.ended_at),
        "agent": attempt.agent,
    }


def _attempt(row: Row[Any]) -> PlanAttempt:
    return PlanAttempt(
        plan_id=row.plan_id,
        attempt=row.attempt,
        status=AttemptStatus(row.status),
        job_id=row.job_id or "",
        model=row.model,
        engine=row.engine,
        role=row.role,
        output=row.output,
        errors=tuple(str(e) for e in row.errors or ()),
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cost=row.cost,
        time_to_first_token=row.time_to_first_token_seconds,
        started_at=row.started_at.timestamp(),
        ended_at=_epoch(row.ended_at),
        agent=row.agent,
    )


_INSERT_PLAN = plans.insert().returning(*plans.c)
_GET_PLAN = select(plans).where(plans.c.id == bindparam("plan_id"))
_PLAN_COLUMNS = tuple(c.name for c in plans.c if c.name != "id")
_UPDATE_PLAN = (
    update(plans)
    .where(plans.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}", type_=plans.c[name].type) for name in _PLAN_COLUMNS})
    .returning(*plans.c)
)
_INSERT_ATTEMPT = plan_attempts.insert().returning(*plan_attempts.c)
_ATTEMPTS_OF = (
    select(plan_attempts)
    .where(plan_attempts.c.plan_id.in_(bindparam("plan_ids", expanding=True)))
    .order_by(plan_attempts.c.plan_id, plan_attempts.c.attempt)
)


# --- the event log ---------------------------------------------------------

#: Takes n numbers: the row lock holds the next writer until this one commits.
_TAKE_SEQUENCES = (
    update(work_event_sequence)
    .where(work_event_sequence.c.id == 1)
    .values(last=work_event_sequence.c.last + bindparam("n"))
    .returning(work_event_sequence.c.last)
)
_LAST_SEQUENCE = select(work_event_sequence.c.last).where(work_event_sequence.c.id == 1)
#: The status change of one task, with the row after it.
_SET_STATUS_RETURNING = _SET_STATUS.returning(*tasks.c)
_TASK_ROWS = select(tasks).where(tasks.c.id.in_(bindparam("ids", expanding=True))).order_by(tasks.c.id)
_RUN_ROWS = (
    select(task_runs).where(task_runs.c.id.in_(bindparam("ids", expanding=True))).order_by(task_runs.c.id)
)
_TASK_PROJECT = select(tasks.c.project_id).where(tasks.c.id == bindparam("task_id"))


def json_value(value: Any) -> Any:
    """A column value as the event log's JSON holds it: timestamps as RFC 3339
    in UTC with microseconds, the rest as JSON has it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def row_json(row: Row[Any]) -> dict[str, Any]:
    """A row as an event's ``data``: every column by name."""
    return {name: json_value(value) for name, value in row._mapping.items()}


def _event(kind: str, entity: str, row: Row[Any], agent: str, **refs: Any) -> NewEvent:
    data = row_json(row)
    return NewEvent(kind, entity, data, agent=agent, **refs)


def _task_event(kind: str, row: Row[Any], agent: str) -> NewEvent:
    return _event(kind, "task", row, agent, project_id=row.project_id, task_id=row.id)


def _run_event(kind: str, row: Row[Any], agent: str) -> NewEvent:
    return _event(kind, "run", row, agent, project_id=row.project_id, task_id=row.task_id, run_id=row.id)


def _plan_event(kind: str, row: Row[Any], agent: str) -> NewEvent:
    return _event(kind, "plan", row, agent, project_id=row.project_id, plan_id=row.id)


async def _append(conn: AsyncConnection, events: Sequence[NewEvent], at: datetime) -> list[WorkEvent]:
    """Number and insert ``events`` at the end of the log, in this transaction.
    The sequence row stays locked until the transaction ends, so numbers
    follow commit order (and a rollback gives them back: no gaps)."""
    if not events:
        return []
    taken = int((await conn.execute(_TAKE_SEQUENCES, {"n": len(events)})).scalar_one())
    last = taken - len(events)
    written = [
        WorkEvent(
            sequence=last + offset,
            at=at.timestamp(),
            kind=event.kind,
            entity=event.entity,
            data=event.data,
            project_id=event.project_id,
            task_id=event.task_id,
            plan_id=event.plan_id,
            run_id=event.run_id,
            agent=event.agent,
        )
        for offset, event in enumerate(events, start=1)
    ]
    await conn.execute(
        work_events.insert(),
        [
            {
                "sequence": e.sequence,
                "at": at,
                "kind": e.kind,
                "entity": e.entity,
                "project_id": e.project_id,
                "task_id": e.task_id,
                "plan_id": e.plan_id,
                "run_id": e.run_id,
                "agent": e.agent,
                "data": dict(e.data),
            }
            for e in written
        ],
    )
    return written


def _work_event(row: Row[Any]) -> WorkEvent:
    return WorkEvent(
        sequence=row.sequence,
        at=row.at.timestamp(),
        kind=row.kind,
        entity=row.entity,
        data=dict(row.data),
        project_id=row.project_id,
        task_id=row.task_id,
        plan_id=row.plan_id,
        run_id=row.run_id,
        agent=row.agent,
    )


#: The table of each entity, for :meth:`PostgresTaskStore.read_views`.
VIEW_TABLES: dict[str, Table] = {
    "project": projects,
    "task": tasks,
    "note": task_notes,
    "link": task_links,
    "override": context_overrides,
    "run": task_runs,
    "plan": plans,
    "plan_attempt": plan_attempts,
}
assert set(VIEW_TABLES) == set(ENTITY_KEYS)


# --- stats -------------------------------------------------------------------


def _usage(query: StatsQuery) -> Any:
    """Ended task runs and plan attempts as (project_id, agent, role, model,
    started_at, failed, tokens, cost, ttft): never a prompt or an output."""
    runs = select(
        task_runs.c.project_id,
        task_runs.c.started_by.label("agent"),
        task_runs.c.role,
        task_runs.c.model,
        task_runs.c.started_at,
        (task_runs.c.status == "failed").label("failed"),
        task_runs.c.input_tokens,
        task_runs.c.output_tokens,
        task_runs.c.cost,
        task_runs.c.time_to_first_token_seconds.label("ttft"),
    ).where(task_runs.c.status != "running")
    attempts = (
        select(
            plans.c.project_id,
            plan_attempts.c.agent,
            plan_attempts.c.role,
            plan_attempts.c.model,
            plan_attempts.c.started_at,
            (plan_attempts.c.status == AttemptStatus.FAILED.value).label("failed"),
            plan_attempts.c.input_tokens,
            plan_attempts.c.output_tokens,
            plan_attempts.c.cost,
            plan_attempts.c.time_to_first_token_seconds.label("ttft"),
        )
        .join(plans, plans.c.id == plan_attempts.c.plan_id)
        .where(plan_attempts.c.ended_at.is_not(None))
    )
    usage = union_all(runs, attempts).subquery("usage")
    conditions: list[ColumnElement[bool]] = []
    if query.project_id:
        conditions.append(usage.c.project_id == query.project_id)
    if query.agent:
        conditions.append(usage.c.agent == query.agent)
    if query.start is not None:
        conditions.append(usage.c.started_at >= _ts(query.start))
    if query.end is not None:
        conditions.append(usage.c.started_at < _ts(query.end))
    return usage, conditions


def _group_key(usage: Any, grouping: Grouping) -> ColumnElement[str]:
    utc = func.timezone("UTC", usage.c.started_at)
    if grouping is Grouping.DAY:
        return func.to_char(utc, "YYYY-MM-DD")
    if grouping is Grouping.MONTH:
        return func.to_char(utc, "YYYY-MM")
    if grouping is Grouping.ROLE:
        return func.coalesce(func.nullif(usage.c.role, ""), "(default)")
    if grouping is Grouping.MODEL:
        return func.coalesce(func.nullif(usage.c.model, ""), "(none)")
    return cast(literal("all"), String)


def _stats_select(query: StatsQuery, grouping: Grouping) -> Select[Any]:
    usage, conditions = _usage(query)
    key = _group_key(usage, grouping).label("key")
    statement = select(
        key,
        func.count().label("jobs"),
        func.coalesce(func.sum(case((usage.c.failed, 1), else_=0)), 0).label("failed"),
        func.coalesce(func.sum(usage.c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(usage.c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(usage.c.cost), 0.0).label("cost"),
        func.count(usage.c.ttft).label("timed_jobs"),
        func.avg(usage.c.ttft).label("mean_ttft"),
        cast(func.percentile_cont(0.95).within_group(usage.c.ttft), Float).label("p95_ttft"),
    ).select_from(usage)
    if conditions:
        statement = statement.where(*conditions)
    if grouping is not Grouping.NONE:
        statement = statement.group_by(key).order_by(key)
    return statement


def _stats_row(row: Row[Any]) -> StatsRow:
    return StatsRow(
        key=row.key,
        jobs=int(row.jobs),
        failed=int(row.failed),
        input_tokens=int(row.input_tokens),
        output_tokens=int(row.output_tokens),
        cost=float(row.cost),
        timed_jobs=int(row.timed_jobs),
        mean_time_to_first_token=None if row.mean_ttft is None else float(row.mean_ttft),
        p95_time_to_first_token=None if row.p95_ttft is None else float(row.p95_ttft),
    )


async def _ensure_project(conn: AsyncConnection, project_id: str, at: float, by: str) -> list[NewEvent]:
    """Create the project row unless it exists, in the caller's transaction;
    the project.created event when it was created here (else no events)."""
    project = {"id": project_id, "created_at": _ts(at), "created_by": by}
    new_project = (await conn.execute(_INSERT_PROJECT, project)).first()
    if new_project is None:
        return []
    return [_event("project.created", "project", new_project, by, project_id=project_id)]


class PostgresTaskStore:
    """:class:`orchestratord.domain.ports.TaskStore` on Postgres.

    ``update_task`` and ``finish_run`` raise :class:`hearth.errors.NotFound`
    (TASK_NOT_FOUND, RUN_NOT_FOUND) for an unknown id; writes that name a
    missing task, project or snapshot fail on the foreign key
    (:class:`sqlalchemy.exc.IntegrityError`): the domain checks first.

    Args:
        on_committed: called with the events of each write once it has
            committed (in commit order); must not block or raise.
    """

    def __init__(
        self, engine: AsyncEngine, *, on_committed: Callable[[list[WorkEvent]], None] | None = None
    ) -> None:
        self._engine = engine
        # Single statements run without BEGIN/COMMIT round trips.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._on_committed = on_committed

    def _committed(self, events: list[WorkEvent]) -> None:
        if events and self._on_committed is not None:
            self._on_committed(events)

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
            row = (await conn.execute(_PROJECT_ROW, {"project_id": project_id})).one()
            events = await _append(
                conn, [_event("project.index_set", "project", row, by, project_id=project_id)], when
            )
        self._committed(events)
        return _project(rows)

    # --- tasks

    async def create_task(self, task: Task) -> Task:
        async with self._engine.begin() as conn:
            changes = await _ensure_project(conn, task.project_id, task.created_at, task.created_by)
            row = (await conn.execute(_INSERT_TASK, _task_values(task))).one()
            changes.append(_task_event("task.created", row, task.created_by))
            events = await _append(conn, changes, _ts(task.created_at))
        self._committed(events)
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
        async with self._engine.begin() as conn:
            row = (await conn.execute(_UPDATE_TASK, params)).first()
            if row is None:
                raise NotFound(
                    f"no task {task.task_id}",
                    reason="TASK_NOT_FOUND",
                    metadata={"task_id": str(task.task_id)},
                )
            events = await _append(
                conn, [_task_event("task.updated", row, task.updated_by)], _ts(task.updated_at)
            )
        self._committed(events)
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
            events = await self._status_events(conn, [c[0] for c in changes], at, by)
        self._committed(events)

    async def _status_events(
        self, conn: AsyncConnection, task_ids: Sequence[int], at: float, by: str, runs: Sequence[int] = ()
    ) -> list[WorkEvent]:
        """The events of runs that ended and tasks whose status was set, read back."""
        changes: list[NewEvent] = []
        if runs:
            for row in await conn.execute(_RUN_ROWS, {"ids": list(runs)}):
                changes.append(_run_event("run.ended", row, by))
        if task_ids:
            for row in await conn.execute(_TASK_ROWS, {"ids": sorted(set(task_ids))}):
                changes.append(_task_event("task.status_changed", row, by))
        return await _append(conn, changes, _ts(at))

    # --- notes

    async def add_note(self, task_id: int, agent: str, text: str, at: float) -> TaskNote:
        values = {"task_id": task_id, "agent": agent, "text": text, "created_at": _ts(at)}
        async with self._engine.begin() as conn:
            row = (await conn.execute(_INSERT_NOTE, values)).one()
            project_id = (await conn.execute(_TASK_PROJECT, {"task_id": task_id})).scalar_one()
            event = _event("note.added", "note", row, agent, project_id=project_id, task_id=task_id)
            events = await _append(conn, [event], _ts(at))
        self._committed(events)
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
        async with self._engine.begin() as conn:
            row = (await conn.execute(_INSERT_LINK, values)).first()
            events: list[WorkEvent] = []
            if row is not None:
                project_id = (await conn.execute(_TASK_PROJECT, {"task_id": link.from_task})).scalar_one()
                event = _event(
                    "link.created",
                    "link",
                    row,
                    link.created_by,
                    project_id=project_id,
                    task_id=link.from_task,
                )
                events = await _append(conn, [event], _ts(link.created_at))
        self._committed(events)
        return row is not None

    async def delete_link(self, from_task: int, to_task: int, kind: LinkKind, *, by: str = "") -> bool:
        """True when the link existed."""
        params = {"from_task": from_task, "to_task": to_task, "kind": kind.value}
        async with self._engine.begin() as conn:
            row = (await conn.execute(_DELETE_LINK, params)).first()
            events: list[WorkEvent] = []
            if row is not None:
                project_id = (await conn.execute(_TASK_PROJECT, {"task_id": from_task})).scalar_one()
                key = {"from_task": from_task, "to_task": to_task, "kind": kind.value}
                event = NewEvent(
                    "link.deleted", "link", key, project_id=project_id, task_id=from_task, agent=by
                )
                events = await _append(conn, [event], datetime.now(UTC))
        self._committed(events)
        return row is not None

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
        async with self._engine.begin() as conn:
            row = (await conn.execute(_SET_OVERRIDE, values)).one()
            project_id = (await conn.execute(_TASK_PROJECT, {"task_id": override.task_id})).scalar_one()
            event = _event(
                "override.set",
                "override",
                row,
                override.set_by,
                project_id=project_id,
                task_id=override.task_id,
            )
            events = await _append(conn, [event], _ts(override.set_at))
        self._committed(events)

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
        async with self._engine.begin() as conn:
            row = (await conn.execute(_INSERT_RUN, _run_values(run))).one()
            events = await _append(
                conn, [_run_event("run.started", row, run.started_by)], _ts(run.started_at)
            )
        self._committed(events)
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
            changes = [_run_event("run.ended" if run.ended_at is not None else "run.started", row, by)]
            if mark_running:
                status = _status_params(run.task_id, TaskStatus.RUNNING, "", run.started_at, by)
                task_row = (await conn.execute(_SET_STATUS_RETURNING, status)).one()
                changes.append(_task_event("task.status_changed", task_row, by))
            events = await _append(conn, changes, _ts(run.started_at))
        self._committed(events)
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
            events = await self._status_events(
                conn,
                [params["b_id"] for params in statuses],
                at,
                by,
                runs=[run.run_id for run, _, _ in ends],
            )
        self._committed(events)

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

    async def latest_done_runs(self, task_ids: Sequence[int]) -> dict[int, TaskRun]:
        """The latest done run of each task that has one."""
        if not task_ids:
            return {}
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(_LATEST_DONE_RUNS, {"task_ids": list(task_ids)})).all()
        return {row.task_id: _run(row) for row in rows}

    async def finish_run(self, run: TaskRun) -> None:
        """Writes status, job_id, model, engine, weights_digest,
        routing_report, tokens, cost, output, end reason and message,
        ended_at and the time to first token; the rest stays as created."""
        params = _prefixed(_finished_run_values(run))
        params["b_id"] = run.run_id
        async with self._engine.begin() as conn:
            row = (await conn.execute(_FINISH_RUN, params)).first()
            if row is None:
                raise NotFound(
                    f"no run {run.run_id}", reason="RUN_NOT_FOUND", metadata={"run_id": str(run.run_id)}
                )
            at = _ts(run.ended_at) if run.ended_at is not None else datetime.now(UTC)
            events = await _append(conn, [_run_event("run.ended", row, run.started_by)], at)
        self._committed(events)

    async def get_run(self, run_id: int) -> TaskRun | None:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_GET_RUN, {"run_id": run_id})).first()
        return None if row is None else _run(row)

    async def list_runs(self, *, project_id: str = "", task_id: int = 0, limit: int = 100) -> list[TaskRun]:
        """Newest first; filtered by whichever of project and task is given
        (all runs when neither is)."""
        async with self._autocommit.connect() as conn:
            return [_run(row) for row in await conn.execute(_list_runs(project_id, task_id, limit))]

    # --- plans

    async def create_plan(self, plan: Plan) -> Plan:
        """Insert a plan (``plan_id`` ignored), creating its project when new."""
        async with self._engine.begin() as conn:
            changes = await _ensure_project(conn, plan.project_id, plan.created_at, plan.created_by)
            row = (await conn.execute(_INSERT_PLAN, _plan_values(plan))).one()
            changes.append(_plan_event("plan.proposed", row, plan.created_by))
            events = await _append(conn, changes, _ts(plan.created_at))
        self._committed(events)
        return _plan(row)

    async def update_plan(self, plan: Plan, kind: str) -> Plan:
        """Write a plan's fields but its id; the event is ``plan.<kind>``."""
        params = _prefixed({k: v for k, v in _plan_values(plan).items()})
        params["b_id"] = plan.plan_id
        async with self._engine.begin() as conn:
            row = (await conn.execute(_UPDATE_PLAN, params)).first()
            if row is None:
                raise NotFound(
                    f"no plan {plan.plan_id}",
                    reason="PLAN_NOT_FOUND",
                    metadata={"plan_id": str(plan.plan_id)},
                )
            events = await _append(
                conn, [_plan_event(f"plan.{kind}", row, plan.updated_by)], _ts(plan.updated_at)
            )
            attempts = await self._attempts(conn, [plan.plan_id])
        self._committed(events)
        return _plan(row, attempts.get(plan.plan_id, ()))

    async def add_plan_attempt(self, attempt: PlanAttempt, project_id: str) -> PlanAttempt:
        async with self._engine.begin() as conn:
            row = (await conn.execute(_INSERT_ATTEMPT, _attempt_values(attempt))).one()
            event = _event(
                "plan_attempt.recorded",
                "plan_attempt",
                row,
                attempt.agent,
                project_id=project_id,
                plan_id=attempt.plan_id,
            )
            at = attempt.ended_at if attempt.ended_at is not None else attempt.started_at
            events = await _append(conn, [event], _ts(at))
        self._committed(events)
        return _attempt(row)

    async def get_plan(self, plan_id: int) -> Plan | None:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_GET_PLAN, {"plan_id": plan_id})).first()
            if row is None:
                return None
            attempts = await self._attempts(conn, [plan_id])
        return _plan(row, attempts.get(plan_id, ()))

    async def list_plans(self, project_id: str, status: PlanStatus | None = None) -> list[Plan]:
        """Newest first."""
        query = select(plans).where(plans.c.project_id == project_id).order_by(plans.c.id.desc())
        if status is not None:
            query = query.where(plans.c.status == status.value)
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(query)).all()
            attempts = await self._attempts(conn, [row.id for row in rows])
        return [_plan(row, attempts.get(row.id, ())) for row in rows]

    async def _attempts(self, conn: AsyncConnection, plan_ids: Sequence[int]) -> dict[int, list[PlanAttempt]]:
        if not plan_ids:
            return {}
        found: dict[int, list[PlanAttempt]] = {}
        for row in await conn.execute(_ATTEMPTS_OF, {"plan_ids": list(plan_ids)}):
            found.setdefault(row.plan_id, []).append(_attempt(row))
        return found

    async def seed_plan(
        self,
        plan: Plan,
        new_tasks: Sequence[tuple[str, Task]],
        requires: Sequence[tuple[str, str]],
        *,
        index_key: str = "",
    ) -> tuple[Plan, list[Task], list[Link]]:
        """In one transaction: create the plan's tasks (keyed), their requires
        links (from key, to key), and mark the plan approved (``plan`` as
        given, with the new task ids and the INDEX task)."""
        at = _ts(plan.updated_at)
        by = plan.updated_by
        async with self._engine.begin() as conn:
            changes: list[NewEvent] = []
            ids: dict[str, int] = {}
            created: list[Task] = []
            for key, task in new_tasks:
                row = (await conn.execute(_INSERT_TASK, _task_values(task))).one()
                ids[key] = row.id
                created.append(_task(row))
                changes.append(_task_event("task.created", row, by))
            links: list[Link] = []
            for frm, to in requires:
                values = {
                    "from_task": ids[frm],
                    "to_task": ids[to],
                    "kind": LinkKind.REQUIRES.value,
                    "created_at": at,
                    "created_by": by,
                }
                link_row = (await conn.execute(_INSERT_LINK, values)).first()
                if link_row is not None:
                    links.append(_link(link_row))
                    changes.append(
                        _event(
                            "link.created", "link", link_row, by, project_id=plan.project_id, task_id=ids[frm]
                        )
                    )
            approved = Plan(
                **{
                    **{f: getattr(plan, f) for f in plan.__dataclass_fields__},
                    "task_ids": ids,
                    "index_task_id": ids.get(index_key, 0),
                }
            )
            params = _prefixed(_plan_values(approved))
            params["b_id"] = plan.plan_id
            row = (await conn.execute(_UPDATE_PLAN, params)).one()
            changes.append(_plan_event("plan.approved", row, by))
            events = await _append(conn, changes, at)
            attempts = await self._attempts(conn, [plan.plan_id])
        self._committed(events)
        return _plan(row, attempts.get(plan.plan_id, ())), created, links

    # --- events, views and stats

    async def read_events(
        self, *, since: int = 0, limit: int = 1000, project_id: str = ""
    ) -> list[WorkEvent]:
        """Events with a sequence above ``since``, ascending, at most ``limit``."""
        query = (
            select(work_events)
            .where(work_events.c.sequence > since)
            .order_by(work_events.c.sequence)
            .limit(limit)
        )
        if project_id:
            query = query.where(work_events.c.project_id == project_id)
        async with self._autocommit.connect() as conn:
            return [_work_event(row) for row in await conn.execute(query)]

    async def last_sequence(self) -> int:
        async with self._autocommit.connect() as conn:
            return int((await conn.execute(_LAST_SEQUENCE)).scalar_one())

    async def read_views(self) -> WorkViews:
        """Every row of the work tables, as the event log holds rows (what
        :func:`~orchestratord.domain.events.rebuild_views` must give back)."""
        views = WorkViews()
        async with self._autocommit.connect() as conn:
            for entity, table in VIEW_TABLES.items():
                for row in await conn.execute(select(table)):
                    data = row_json(row)
                    views.rows[entity][entity_key(entity, data)] = data
        return views

    async def stats(self, query: StatsQuery) -> StatsReport:
        """The usage report of ``query`` (see :mod:`orchestratord.domain.stats`)."""
        async with self._autocommit.connect() as conn:
            rows = [_stats_row(row) for row in await conn.execute(_stats_select(query, query.group_by))]
            total_row = (await conn.execute(_stats_select(query, Grouping.NONE))).one()
        if query.group_by is Grouping.NONE:
            rows = [row for row in rows if row.jobs]
        return StatsReport(query, rows, _stats_row(total_row))
