"""The orchestrator's tables, as SQLAlchemy Core. The migrations (0001, then
0002) create exactly these; a change here needs a new migration. Text a
model or a caller can fill is :class:`StorableText` (PostgreSQL refuses NUL)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
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
