"""Plans and their attempts, the work event log, and on task runs the role,
system prompt, escalation and time to first token.

The log starts complete: every row already in the work tables gets one
``<entity>.imported`` event holding it (as the task store writes rows into
events), so the views can be rebuilt from the log alone.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = postgresql.TIMESTAMP(timezone=True)
_EMPTY_OBJECT = sa.text("'{}'::jsonb")
_EMPTY_ARRAY = sa.text("'[]'::jsonb")


def _text(name: str) -> sa.Column:
    """A non-null text column that defaults to ''."""
    return sa.Column(name, sa.Text(), nullable=False, server_default="")


def _zero(name: str, kind: type[sa.types.TypeEngine] = sa.Integer) -> sa.Column:
    return sa.Column(name, kind(), nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    op.add_column("task_runs", _text("role"))
    op.add_column("task_runs", _text("system_prompt"))
    op.add_column(
        "task_runs",
        sa.Column("escalated_from", sa.BigInteger(), sa.ForeignKey("task_runs.id"), nullable=True),
    )
    op.add_column(
        "task_runs", sa.Column("escalation", postgresql.JSONB(), nullable=False, server_default=_EMPTY_OBJECT)
    )
    op.add_column("task_runs", sa.Column("time_to_first_token_seconds", sa.Double(), nullable=True))
    op.create_index("task_runs_started_at_idx", "task_runs", ["started_at"])
    op.create_table(
        "plans",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("project_id", sa.Text(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("goal", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("draft", postgresql.JSONB(), nullable=False, server_default=_EMPTY_OBJECT),
        _zero("revision"),
        _text("reason"),
        _text("model"),
        sa.Column("created_at", _TS, nullable=False),
        _text("created_by"),
        sa.Column("updated_at", _TS, nullable=False),
        _text("updated_by"),
        sa.Column("decided_at", _TS, nullable=True),
        _text("decided_by"),
        sa.Column("task_ids", postgresql.JSONB(), nullable=False, server_default=_EMPTY_OBJECT),
        sa.Column("index_task_id", sa.BigInteger(), sa.ForeignKey("tasks.id"), nullable=True),
    )
    op.create_index("plans_project_id_idx", "plans", ["project_id", sa.text("id DESC")])
    op.create_table(
        "plan_attempts",
        sa.Column("plan_id", sa.BigInteger(), sa.ForeignKey("plans.id"), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("job_id", postgresql.UUID(as_uuid=False), nullable=True),
        _text("model"),
        _text("engine"),
        _text("role"),
        _text("output"),
        sa.Column("errors", postgresql.JSONB(), nullable=False, server_default=_EMPTY_ARRAY),
        _zero("input_tokens"),
        _zero("output_tokens"),
        _zero("cost", sa.Double),
        sa.Column("time_to_first_token_seconds", sa.Double(), nullable=True),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("ended_at", _TS, nullable=True),
        _text("agent"),
    )
    op.create_table(
        "work_events",
        sa.Column("sequence", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("entity", sa.Text(), nullable=False),
        _text("project_id"),
        _zero("task_id", sa.BigInteger),
        _zero("plan_id", sa.BigInteger),
        _zero("run_id", sa.BigInteger),
        _text("agent"),
        sa.Column("data", postgresql.JSONB(), nullable=False),
    )
    op.create_index("work_events_project_idx", "work_events", ["project_id", "sequence"])
    op.create_table(
        "work_event_sequence",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
    )
    imported = _import_existing_rows()
    op.execute(sa.text(f"INSERT INTO work_event_sequence (id, last) VALUES (1, {imported})"))


#: (entity, table, key columns in order, how to find the project) of the rows imported.
_IMPORTED = (
    ("project", "projects", "id", "id"),
    ("task", "tasks", "id", "project_id"),
    ("note", "task_notes", "id", None),
    ("link", "task_links", "from_task, to_task, kind", None),
    ("override", "context_overrides", "task_id", None),
    ("run", "task_runs", "id", "project_id"),
)


def _json_value(value: Any) -> Any:
    # As orchestratord.adapters.task_store.json_value writes row values (kept
    # here: a migration must not change when the code does).
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _import_existing_rows() -> int:
    """One event per existing row; returns how many."""
    conn = op.get_bind()
    projects_of: dict[int, str] = dict(conn.execute(sa.text("SELECT id, project_id FROM tasks")).all())
    sequence = 0
    now = datetime.now(UTC)
    insert = sa.text(
        "INSERT INTO work_events (sequence, at, kind, entity, project_id, task_id, run_id, data)"
        " VALUES (:sequence, :at, :kind, :entity, :project_id, :task_id, :run_id, CAST(:data AS jsonb))"
    )
    for entity, table, order, project_column in _IMPORTED:
        rows = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order}")).mappings().all()
        batch = []
        for row in rows:
            data = {name: _json_value(value) for name, value in row.items()}
            task_id = data.get("task_id", data.get("from_task", data["id"] if entity == "task" else 0))
            project = data[project_column] if project_column else projects_of.get(task_id, "")
            sequence += 1
            batch.append(
                {
                    "sequence": sequence,
                    "at": now,
                    "kind": f"{entity}.imported",
                    "entity": entity,
                    "project_id": project,
                    "task_id": task_id or 0,
                    "run_id": data["id"] if entity == "run" else 0,
                    "data": json.dumps(data, ensure_ascii=False),
                }
            )
        if batch:
            conn.execute(insert, batch)
    return sequence


def downgrade() -> None:
    op.drop_table("work_event_sequence")
    op.drop_table("work_events")
    op.drop_table("plan_attempts")
    op.drop_table("plans")
    op.drop_index("task_runs_started_at_idx", table_name="task_runs")
    for column in ("time_to_first_token_seconds", "escalation", "escalated_from", "system_prompt", "role"):
        op.drop_column("task_runs", column)
