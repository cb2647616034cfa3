"""The orchestrator's tables, as SQLAlchemy Core. The migrations (0001 to
0004) create exactly these; a change here needs a new migration. Text a
model or a caller can fill is :class:`StorableText` (PostgreSQL refuses NUL)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

from orchestratord.adapters.storable import StorableText

metadata = MetaData()

#: One row per job: the spec, where it is, how it ended.
jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("request_id", UUID(as_uuid=False), nullable=True),
    Column("state", Text, nullable=False),
    Column("priority", Text, nullable=False),
    # The target chosen at submit (the first of route_chain).
    Column("model", Text, nullable=False),
    Column("project_id", Text, nullable=False, server_default=""),
    Column("spec", JSONB, nullable=False),
    Column("route_chain", JSONB, nullable=False),
    Column("routing_report", JSONB, nullable=False),
    Column("output", StorableText, nullable=False, server_default=""),
    Column("end_reason", StorableText, nullable=False, server_default=""),
    Column("end_message", StorableText, nullable=False, server_default=""),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Column("started_at", TIMESTAMP(timezone=True), nullable=True),
    Column("ended_at", TIMESTAMP(timezone=True), nullable=True),
    Column("last_sequence", BigInteger, nullable=False, server_default=text("0")),
    # The tool calls of a completed job ([{id, name, arguments}]).
    Column("tool_calls", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Index("jobs_request_id_key", "request_id", unique=True),
    Index("jobs_state_created_at_idx", "state", "created_at"),
    Index("jobs_created_at_idx", text("created_at DESC")),
)

#: Each job's event log; sequence numbers start at 1 without gaps.
job_events = Table(
    "job_events",
    metadata,
    Column("job_id", UUID(as_uuid=False), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
)

#: How each job that reached a worker ran.
runs = Table(
    "runs",
    metadata,
    Column("job_id", UUID(as_uuid=False), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("queue_wait_seconds", Double, nullable=True),
    Column("time_to_first_token_seconds", Double, nullable=True),
    Column("total_seconds", Double, nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("decode_tokens_per_second", Double, nullable=False),
    Column("worker_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("engine", Text, nullable=False),
    Column("trace_id", Text, nullable=False),
    Column("context_memory_ids", JSONB, nullable=False),
    Column("finish_reason", Text, nullable=False, server_default=""),
)

_EMPTY_OBJECT = text("'{}'::jsonb")
_EMPTY_ARRAY = text("'[]'::jsonb")

#: A project: the scope of tasks, written when its first task is created or
#: its INDEX is first written, whichever comes first.
projects = Table(
    "projects",
    metadata,
    Column("id", Text, primary_key=True),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Column("created_by", StorableText, nullable=False, server_default=""),
    # The INDEX: a person's document about the project as a whole.
    Column("index_document", StorableText, nullable=False, server_default=""),
    Column("index_updated_at", TIMESTAMP(timezone=True), nullable=True),
    Column("index_updated_by", StorableText, nullable=False, server_default=""),
)

#: One row per task; never deleted (closed tasks keep closed_at/by).
tasks = Table(
    "tasks",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("project_id", Text, ForeignKey("projects.id"), nullable=False),
    Column("name", StorableText, nullable=False, server_default=""),
    Column("status", Text, nullable=False),
    # Lower runs first (0 before 1).
    Column("priority", Integer, nullable=False, server_default=text("0")),
    # {"prompt": str, "messages": [ChatMessage.to_json()]}.
    Column("input", JSONB, nullable=False),
    Column("role", Text, nullable=False, server_default=""),
    Column("model", Text, nullable=False, server_default=""),
    Column("labels", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("requires_approval", Boolean, nullable=False, server_default=text("false")),
    Column("approved", Boolean, nullable=False, server_default=text("false")),
    Column("context_budget", Integer, nullable=False, server_default=text("0")),
    Column("status_reason", StorableText, nullable=False, server_default=""),
    Column("hold_reason", StorableText, nullable=False, server_default=""),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Column("created_by", StorableText, nullable=False, server_default=""),
    Column("updated_at", TIMESTAMP(timezone=True), nullable=False),
    Column("updated_by", StorableText, nullable=False, server_default=""),
    Column("closed_at", TIMESTAMP(timezone=True), nullable=True),
    Column("closed_by", StorableText, nullable=False, server_default=""),
    # A project's tasks in the order they run.
    Index("tasks_project_order_idx", "project_id", "priority", "created_at", "id"),
)

#: Notes on a task, only ever appended.
task_notes = Table(
    "task_notes",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("task_id", BigInteger, ForeignKey("tasks.id"), nullable=False),
    Column("agent", StorableText, nullable=False, server_default=""),
    Column("text", StorableText, nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Index("task_notes_task_id_idx", "task_id", "id"),
)

#: from_task --kind--> to_task; the only rows that are ever deleted.
task_links = Table(
    "task_links",
    metadata,
    Column("from_task", BigInteger, ForeignKey("tasks.id"), primary_key=True),
    Column("to_task", BigInteger, ForeignKey("tasks.id"), primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Column("created_by", StorableText, nullable=False, server_default=""),
    # Incoming links (the primary key serves outgoing ones).
    Index("task_links_to_task_idx", "to_task"),
)

#: A person's pins and excludes for a task's context; one row per task, replaced.
context_overrides = Table(
    "context_overrides",
    metadata,
    Column("task_id", BigInteger, ForeignKey("tasks.id"), primary_key=True),
    Column("pins", JSONB, nullable=False, server_default=_EMPTY_ARRAY),
    Column("excludes", JSONB, nullable=False, server_default=_EMPTY_ARRAY),
    Column("set_by", StorableText, nullable=False, server_default=""),
    Column("set_at", TIMESTAMP(timezone=True), nullable=False),
)

#: Context bundles by content hash, each stored once.
context_snapshots = Table(
    "context_snapshots",
    metadata,
    Column("hash", Text, primary_key=True),
    Column("items", JSONB, nullable=False),
    Column("budget", Integer, nullable=False),
    Column("counter", Text, nullable=False),
    Column("exact", Boolean, nullable=False),
    Column("prompt", StorableText, nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
)

#: One execution of a task, with everything needed to reproduce it.
task_runs = Table(
    "task_runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("task_id", BigInteger, ForeignKey("tasks.id"), nullable=False),
    Column("project_id", Text, ForeignKey("projects.id"), nullable=False),
    Column("status", Text, nullable=False),
    # NULL when the run ended before its context was assembled.
    Column("context_hash", Text, ForeignKey("context_snapshots.hash"), nullable=True),
    # The Hearth job; no foreign key: the run may name its job before the
    # job's row is written, and jobs belong to the job store.
    Column("job_id", UUID(as_uuid=False), nullable=True),
    Column("rerun_of", BigInteger, ForeignKey("task_runs.id"), nullable=True),
    Column("model", Text, nullable=False, server_default=""),
    Column("engine", Text, nullable=False, server_default=""),
    Column("weights_digest", Text, nullable=False, server_default=""),
    Column("sampling", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("routing_report", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("input_tokens", Integer, nullable=False, server_default=text("0")),
    Column("output_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cost", Double, nullable=False, server_default=text("0")),
    Column("output", StorableText, nullable=False, server_default=""),
    Column("end_reason", StorableText, nullable=False, server_default=""),
    Column("end_message", StorableText, nullable=False, server_default=""),
    Column("started_at", TIMESTAMP(timezone=True), nullable=False),
    Column("ended_at", TIMESTAMP(timezone=True), nullable=True),
    Column("started_by", StorableText, nullable=False, server_default=""),
    # 0004: the role and system prompt it ran with, an escalation, the time to first token.
    Column("role", Text, nullable=False, server_default=""),
    Column("system_prompt", StorableText, nullable=False, server_default=""),
    Column("escalated_from", BigInteger, ForeignKey("task_runs.id"), nullable=True),
    Column("escalation", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("time_to_first_token_seconds", Double, nullable=True),
    Index("task_runs_task_id_idx", "task_id", text("id DESC")),
    Index("task_runs_project_id_idx", "project_id", text("id DESC")),
    Index("task_runs_started_at_idx", "started_at"),
)

#: A plan: a goal broken into tasks by the manager role; a draft until a
#: person approves (its tasks are then created) or rejects it.
plans = Table(
    "plans",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("project_id", Text, ForeignKey("projects.id"), nullable=False),
    Column("goal", StorableText, nullable=False),
    Column("status", Text, nullable=False),
    # {"summary": str, "tasks": [{key, name, role, prompt, requires, priority, produces_index}]}.
    Column("draft", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("revision", Integer, nullable=False, server_default=text("0")),
    Column("reason", StorableText, nullable=False, server_default=""),
    Column("model", Text, nullable=False, server_default=""),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Column("created_by", StorableText, nullable=False, server_default=""),
    Column("updated_at", TIMESTAMP(timezone=True), nullable=False),
    Column("updated_by", StorableText, nullable=False, server_default=""),
    Column("decided_at", TIMESTAMP(timezone=True), nullable=True),
    Column("decided_by", StorableText, nullable=False, server_default=""),
    # key -> task id, once approved.
    Column("task_ids", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("index_task_id", BigInteger, ForeignKey("tasks.id"), nullable=True),
    Index("plans_project_id_idx", "project_id", text("id DESC")),
)

#: Each job of a plan's proposal and what came of it.
plan_attempts = Table(
    "plan_attempts",
    metadata,
    Column("plan_id", BigInteger, ForeignKey("plans.id"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    # valid, invalid or failed.
    Column("status", Text, nullable=False),
    Column("job_id", UUID(as_uuid=False), nullable=True),
    Column("model", Text, nullable=False, server_default=""),
    Column("engine", Text, nullable=False, server_default=""),
    Column("role", Text, nullable=False, server_default=""),
    Column("output", StorableText, nullable=False, server_default=""),
    Column("errors", JSONB, nullable=False, server_default=_EMPTY_ARRAY),
    Column("input_tokens", Integer, nullable=False, server_default=text("0")),
    Column("output_tokens", Integer, nullable=False, server_default=text("0")),
    Column("cost", Double, nullable=False, server_default=text("0")),
    Column("time_to_first_token_seconds", Double, nullable=True),
    Column("started_at", TIMESTAMP(timezone=True), nullable=False),
    Column("ended_at", TIMESTAMP(timezone=True), nullable=True),
    Column("agent", StorableText, nullable=False, server_default=""),
)

#: The work event log: every change of the tables above (but snapshots), in
#: commit order, numbered without gaps; ``data`` is the entity's row after it.
work_events = Table(
    "work_events",
    metadata,
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("at", TIMESTAMP(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("entity", Text, nullable=False),
    Column("project_id", Text, nullable=False, server_default=""),
    Column("task_id", BigInteger, nullable=False, server_default=text("0")),
    Column("plan_id", BigInteger, nullable=False, server_default=text("0")),
    Column("run_id", BigInteger, nullable=False, server_default=text("0")),
    Column("agent", StorableText, nullable=False, server_default=""),
    Column("data", JSONB, nullable=False),
    Index("work_events_project_idx", "project_id", "sequence"),
)

#: The last sequence number of the work event log, in one row (id 1): a
#: write takes its numbers with one UPDATE, whose row lock holds the next
#: writer until it commits, so numbers follow commit order without gaps.
work_event_sequence = Table(
    "work_event_sequence",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last", BigInteger, nullable=False),
)

#: Stored responses of the OpenAI Responses API: the conversation so far
#: (Hearth's messages, [{role, content, tool_calls, ...}]) and the response
#: object as returned. Read only under the project that stored them.
responses = Table(
    "responses",
    metadata,
    Column("id", Text, primary_key=True),
    Column("project_id", StorableText, nullable=False, server_default=""),
    Column("job_id", UUID(as_uuid=False), nullable=False),
    Column("previous_response_id", StorableText, nullable=False, server_default=""),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Column("messages", JSONB, nullable=False),
    Column("body", JSONB, nullable=False),
    Index("responses_project_id_idx", "project_id", "created_at"),
)
