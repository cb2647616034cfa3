"""The job store on Postgres: SQLAlchemy Core statements over asyncpg.

Core (not ORM objects) throughout: the journal writes a batch of events as
one executemany, and a submit is two statements in one transaction.

Token events are by far the most frequent, so the token events of one job
that arrive in one journal flush with consecutive sequence numbers are one
row: ``sequence`` is the first one's, the payload holds each event's text,
count, tool-call pieces and time (as microseconds after the row's
``created_at``). A row of a single event keeps the plain event payload.
Readers expand rows back into events, identical to the live ones.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, Text, bindparam, func, select, tuple_, union_all, update
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hearth.chat import ToolCall, ToolCallDelta
from orchestratord.adapters.schema import job_events, jobs, runs
from orchestratord.adapters.storable import dumps_storable
from orchestratord.domain.jobs import (
    Failed,
    JobEnd,
    JobEvent,
    JobSnapshot,
    JobSpec,
    JobState,
    RouteDecision,
    RunRecord,
    Started,
    Tokens,
)
from orchestratord.domain.ports import JobPage, RecoveredJob, Recovery

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

RESTARTED_REASON = "ORCHESTRATOR_RESTARTED"
RESTARTED_MESSAGE = "the orchestrator restarted while the job was running"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """The service's async engine. asyncpg, a small pool, pre-ping off (the
    journal retries a failed batch anyway); every jsonb value is written
    storable (see ``storable``)."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=2 * pool_size,
        pool_recycle=3600,
        json_serializer=dumps_storable,
    )


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


_JOB_COLUMNS = (
    jobs.c.id,
    jobs.c.request_id,
    jobs.c.state,
    jobs.c.spec,
    jobs.c.route_chain,
    jobs.c.routing_report,
    jobs.c.output,
    jobs.c.end_reason,
    jobs.c.end_message,
    jobs.c.created_at,
    jobs.c.started_at,
    jobs.c.ended_at,
    jobs.c.last_sequence,
    jobs.c.tool_calls,
    runs.c.job_id.label("run_job_id"),
    runs.c.queue_wait_seconds,
    runs.c.time_to_first_token_seconds,
    runs.c.total_seconds,
    runs.c.input_tokens,
    runs.c.output_tokens,
    runs.c.decode_tokens_per_second,
    runs.c.worker_id,
    runs.c.model.label("run_model"),
    runs.c.engine,
    runs.c.trace_id,
    runs.c.context_memory_ids,
    runs.c.finish_reason,
)


def _select_jobs() -> Select[Any]:
    return select(*_JOB_COLUMNS).select_from(jobs.outerjoin(runs, runs.c.job_id == jobs.c.id))


def _snapshot(row: Row[Any]) -> JobSnapshot:
    run = None
    if row.run_job_id is not None:
        run = RunRecord(
            queue_wait=row.queue_wait_seconds,
            time_to_first_token=row.time_to_first_token_seconds,
            total_duration=row.total_seconds,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            decode_tokens_per_second=row.decode_tokens_per_second,
            worker_id=row.worker_id,
            model=row.run_model,
            engine=row.engine,
            trace_id=row.trace_id,
            context_memory_ids=tuple(row.context_memory_ids or ()),
            finish_reason=row.finish_reason,
        )
    return JobSnapshot(
        job_id=row.id,
        spec=JobSpec.from_json(row.spec),
        state=JobState(row.state),
        request_id=row.request_id,
        created_at=row.created_at.timestamp(),
        started_at=_epoch(row.started_at),
        ended_at=_epoch(row.ended_at),
        output=row.output,
        end_reason=row.end_reason,
        end_message=row.end_message,
        run=run,
        route=RouteDecision(tuple(row.route_chain), row.routing_report),
        last_sequence=row.last_sequence,
        tool_calls=tuple(ToolCall.from_json(c) for c in row.tool_calls or ()),
    )


def _event_row(event: JobEvent) -> dict[str, Any]:
    return {
        "job_id": event.job_id,
        "sequence": event.sequence,
        "kind": event.body.kind,
        "payload": event.body.payload(),
        "created_at": _ts(event.time),
    }


def _micros_of(epoch: float) -> int:
    """Epoch microseconds as datetime.fromtimestamp rounds them (so a token
    row's offsets give back exactly the times a single row would hold)."""
    fraction, whole = math.modf(epoch)
    return int(whole) * 1_000_000 + round(fraction * 1e6)


def _event_rows(events: Sequence[JobEvent]) -> list[dict[str, Any]]:
    """The rows for a batch: each run of consecutive token events of one job
    in one row, every other event in its own."""
    rows: list[dict[str, Any]] = []
    run: list[JobEvent] = []

    def close_run() -> None:
        if len(run) == 1:
            rows.append(_event_row(run[0]))
        elif run:
            first = _micros_of(run[0].time)
            payload: dict[str, Any] = {
                "texts": [e.body.text for e in run],  # type: ignore[union-attr]
                "token_counts": [e.body.token_count for e in run],  # type: ignore[union-attr]
                "offsets_us": [_micros_of(e.time) - first for e in run],
            }
            if any(e.body.tool_calls for e in run):  # type: ignore[union-attr]
                payload["tool_calls"] = [e.body.payload().get("tool_calls", []) for e in run]
            rows.append(
                {
                    "job_id": run[0].job_id,
                    "sequence": run[0].sequence,
                    "kind": Tokens.kind,
                    "payload": payload,
                    "created_at": _ts(run[0].time),
                }
            )
        run.clear()

    for event in sorted(events, key=_by_job_and_sequence):
        body = event.body
        if type(body) is Tokens:
            if run and (run[-1].job_id != event.job_id or run[-1].sequence + 1 != event.sequence):
                close_run()
            run.append(event)
            continue
        close_run()
        rows.append(_event_row(event))
    close_run()
    return rows


def _by_job_and_sequence(event: JobEvent) -> tuple[str, int]:
    return (event.job_id, event.sequence)


def _events(row: Row[Any]) -> list[JobEvent]:
    """The events a row holds (one, or a run of token events)."""
    payload = row.payload
    if row.kind != Tokens.kind or "texts" not in payload:
        return [
            JobEvent.from_payload(row.job_id, row.sequence, row.created_at.timestamp(), row.kind, payload)
        ]
    base = row.created_at
    pieces = payload.get("tool_calls")
    events = []
    for index, (text, count, offset) in enumerate(
        zip(payload["texts"], payload["token_counts"], payload["offsets_us"], strict=True)
    ):
        calls = tuple(ToolCallDelta(**d) for d in pieces[index]) if pieces else ()
        time = (base + offset * _MICROSECOND).timestamp()
        events.append(JobEvent(row.job_id, row.sequence + index, time, Tokens(text, count, calls)))
    return events


def _last_sequence(row: Row[Any]) -> int:
    payload = row.payload
    if row.kind == Tokens.kind and "texts" in payload:
        return int(row.sequence) + len(payload["texts"]) - 1
    return int(row.sequence)


def _run_row(job_id: str, run: RunRecord) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "queue_wait_seconds": run.queue_wait,
        "time_to_first_token_seconds": run.time_to_first_token,
        "total_seconds": run.total_duration,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "decode_tokens_per_second": run.decode_tokens_per_second,
        "worker_id": run.worker_id,
        "model": run.model,
        "engine": run.engine,
        "trace_id": run.trace_id,
        "context_memory_ids": list(run.context_memory_ids),
        "finish_reason": run.finish_reason,
    }


# Statements built once; SQLAlchemy caches their compiled form.
_NEW_JOB_COLUMNS = (
    "id",
    "request_id",
    "state",
    "priority",
    "model",
    "project_id",
    "spec",
    "route_chain",
    "routing_report",
    "created_at",
    "last_sequence",
)
_INSERTED_JOB = (
    pg_insert(jobs)
    .values({name: bindparam(f"p_{name}", type_=jobs.c[name].type) for name in _NEW_JOB_COLUMNS})
    .on_conflict_do_nothing(index_elements=["request_id"])
    .returning(jobs.c.id, jobs.c.created_at, jobs.c.last_sequence)
    .cte("inserted_job")
)
#: The job row and its first event; returns nothing when request_id exists.
_INSERT_JOB = (
    job_events.insert()
    .from_select(
        ["job_id", "sequence", "kind", "payload", "created_at"],
        select(
            _INSERTED_JOB.c.id,
            _INSERTED_JOB.c.last_sequence,
            bindparam("p_kind", type_=Text()),
            bindparam("p_payload", type_=JSONB()),
            _INSERTED_JOB.c.created_at,
        ),
    )
    .returning(job_events.c.job_id)
)
_GET_JOB = _select_jobs().where(jobs.c.id == bindparam("job_id"))
_FIND_BY_REQUEST_ID = _select_jobs().where(jobs.c.request_id == bindparam("request_id"))
#: The rows after ``after``, and the one before it (a token row may hold
#: events on both sides of ``after``).
_READ_EVENTS = union_all(
    select(job_events).where(
        job_events.c.job_id == bindparam("job_id"), job_events.c.sequence > bindparam("after")
    ),
    select(job_events)
    .where(job_events.c.job_id == bindparam("job_id"), job_events.c.sequence <= bindparam("after"))
    .order_by(job_events.c.sequence.desc())
    .limit(1),
)
_INSERT_EVENTS = pg_insert(job_events).on_conflict_do_nothing(index_elements=["job_id", "sequence"])
_INSERT_RUNS = pg_insert(runs).on_conflict_do_nothing(index_elements=["job_id"])
_MARK_STARTED = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job_id"), jobs.c.state == JobState.QUEUED.value)
    .values(state=JobState.RUNNING.value, started_at=bindparam("b_started_at"))
)
_MARK_ENDED = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_job_id"))
    .values(
        state=bindparam("b_state"),
        output=bindparam("b_output"),
        end_reason=bindparam("b_end_reason"),
        end_message=bindparam("b_end_message"),
        started_at=bindparam("b_started_at"),
        ended_at=bindparam("b_ended_at"),
        last_sequence=bindparam("b_last_sequence"),
        tool_calls=bindparam("b_tool_calls"),
        # The report as the job ended (served target, fallbacks); NULL keeps
        # the one stored at submit.
        routing_report=func.coalesce(
            bindparam("b_routing_report", type_=JSONB(none_as_null=True)), jobs.c.routing_report
        ),
    )
)


class PostgresJobStore:
    """:class:`orchestratord.domain.ports.JobStore` on Postgres."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Single statements (submit's insert, every read) run without
        # BEGIN/COMMIT round trips; batches and recovery use transactions.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def insert_job(self, job: JobSnapshot, queued: JobEvent) -> bool:
        # One statement (the job row and its first event in a CTE), so it is
        # atomic without BEGIN/COMMIT round trips: this is on submit's path.
        params = {
            "p_id": job.job_id,
            "p_request_id": job.request_id,
            "p_state": job.state.value,
            "p_priority": job.spec.priority.value,
            "p_model": job.route.chain[0] if job.route.chain else job.spec.model,
            "p_project_id": job.spec.project_id,
            "p_spec": job.spec.to_json(),
            "p_route_chain": list(job.route.chain),
            "p_routing_report": dict(job.route.report),
            "p_created_at": _ts(job.created_at),
            "p_last_sequence": queued.sequence,
            "p_kind": queued.body.kind,
            "p_payload": queued.body.payload(),
        }
        async with self._autocommit.connect() as conn:
            inserted = (await conn.execute(_INSERT_JOB, params)).first()
        return inserted is not None

    async def get_job(self, job_id: str) -> JobSnapshot | None:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_GET_JOB, {"job_id": job_id})).first()
        return None if row is None else _snapshot(row)

    async def find_by_request_id(self, request_id: str) -> JobSnapshot | None:
        async with self._autocommit.connect() as conn:
            row = (await conn.execute(_FIND_BY_REQUEST_ID, {"request_id": request_id})).first()
        return None if row is None else _snapshot(row)

    async def list_jobs(
        self, page_size: int, after: tuple[int, str] | None, state: JobState | None
    ) -> JobPage:
        query = _select_jobs().order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(page_size + 1)
        if state is not None:
            query = query.where(jobs.c.state == state.value)
        if after is not None:
            created = _EPOCH + after[0] * _MICROSECOND
            query = query.where(
                tuple_(jobs.c.created_at, jobs.c.id)
                < tuple_(
                    bindparam("after_created", created, type_=TIMESTAMP(timezone=True)),
                    bindparam("after_id", after[1], type_=UUID(as_uuid=False)),
                )
            )
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(query)).all()
        more = len(rows) > page_size
        rows = rows[:page_size]
        next_after = (_micros(rows[-1].created_at), rows[-1].id) if more and rows else None
        return JobPage([_snapshot(row) for row in rows], next_after)

    async def read_events(self, job_id: str, after_sequence: int) -> list[JobEvent]:
        async with self._autocommit.connect() as conn:
            rows = (await conn.execute(_READ_EVENTS, {"job_id": job_id, "after": after_sequence})).all()
        events = [event for row in sorted(rows, key=lambda r: r.sequence) for event in _events(row)]
        return [event for event in events if event.sequence > after_sequence]

    async def write_batch(self, events: Sequence[JobEvent], ends: Sequence[JobEnd]) -> None:
        rows = _event_rows(events)
        rows.extend(_event_row(end.event) for end in ends)
        ending = {end.event.job_id for end in ends}
        # A job that starts and ends in the same batch needs only the end's update.
        starts = [
            {"b_job_id": event.job_id, "b_started_at": _ts(event.time)}
            for event in events
            if type(event.body) is Started and event.job_id not in ending
        ]
        async with self._engine.begin() as conn:
            if rows:
                await conn.execute(_INSERT_EVENTS, rows)
            if starts:
                await conn.execute(_MARK_STARTED, starts)
            if ends:
                await conn.execute(
                    _MARK_ENDED,
                    [
                        {
                            "b_job_id": end.event.job_id,
                            "b_state": end.state.value,
                            "b_output": end.output,
                            "b_end_reason": end.end_reason,
                            "b_end_message": end.end_message,
                            "b_started_at": None if end.started_at is None else _ts(end.started_at),
                            "b_ended_at": _ts(end.ended_at),
                            "b_last_sequence": end.event.sequence,
                            "b_tool_calls": [c.to_json() for c in end.tool_calls],
                            "b_routing_report": None
                            if end.routing_report is None
                            else dict(end.routing_report),
                        }
                        for end in ends
                    ],
                )
                run_rows = [_run_row(end.event.job_id, end.run) for end in ends if end.run is not None]
                if run_rows:
                    await conn.execute(_INSERT_RUNS, run_rows)

    async def recover(self, now: float) -> Recovery:
        ended_at = _ts(now)
        async with self._engine.begin() as conn:
            running = (
                (
                    await conn.execute(
                        select(jobs.c.id).where(jobs.c.state == JobState.RUNNING.value).with_for_update()
                    )
                )
                .scalars()
                .all()
            )
            failed: list[JobEvent] = []
            if running:
                logs = await conn.execute(
                    select(job_events)
                    .where(job_events.c.job_id.in_(running))
                    .order_by(job_events.c.job_id, job_events.c.sequence)
                )
                by_job: dict[str, tuple[int, str]] = {}
                for row in logs:
                    last, output = by_job.get(row.job_id, (0, ""))
                    if row.kind == Tokens.kind:
                        output += "".join(e.body.text for e in _events(row))  # type: ignore[union-attr]
                    by_job[row.job_id] = (max(last, _last_sequence(row)), output)
                updates = []
                for job_id in running:
                    last, output = by_job.get(job_id, (0, ""))
                    failed.append(
                        JobEvent(job_id, last + 1, now, Failed(RESTARTED_REASON, RESTARTED_MESSAGE))
                    )
                    updates.append(
                        {
                            "b_job_id": job_id,
                            "b_state": JobState.FAILED.value,
                            "b_output": output,
                            "b_end_reason": RESTARTED_REASON,
                            "b_end_message": RESTARTED_MESSAGE,
                            "b_started_at": None,
                            "b_ended_at": ended_at,
                            "b_last_sequence": last + 1,
                            "b_tool_calls": [],
                            "b_routing_report": None,
                        }
                    )
                await conn.execute(_INSERT_EVENTS, [_event_row(event) for event in failed])
                # started_at is kept as it was: COALESCE with the stored value.
                await conn.execute(
                    _MARK_ENDED.values(
                        started_at=func.coalesce(jobs.c.started_at, bindparam("b_started_at"))
                    ),
                    updates,
                )
            queued_rows = (
                await conn.execute(
                    _select_jobs()
                    .where(jobs.c.state == JobState.QUEUED.value)
                    .order_by(jobs.c.created_at, jobs.c.id)
                )
            ).all()
            events_by_job: dict[str, list[JobEvent]] = defaultdict(list)
            if queued_rows:
                event_rows = await conn.execute(
                    select(job_events)
                    .where(job_events.c.job_id.in_([row.id for row in queued_rows]))
                    .order_by(job_events.c.job_id, job_events.c.sequence)
                )
                for row in event_rows:
                    events_by_job[row.job_id].extend(_events(row))
        queued = [RecoveredJob(_snapshot(row), events_by_job[row.id]) for row in queued_rows]
        return Recovery(failed, queued)
