"""Projects (with their INDEX document), tasks, their links and notes,
context overrides and snapshots, and task runs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = postgresql.TIMESTAMP(timezone=True)
_EMPTY_OBJECT = sa.text("'{}'::jsonb")
_EMPTY_ARRAY = sa.text("'[]'::jsonb")


def _text(name: str) -> sa.Column:
    """A non-null text column that defaults to ''."""
    return sa.Column(name, sa.Text(), nullable=False, server_default="")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("created_at", _TS, nullable=False),
        _text("created_by"),
        _text("index_document"),
        sa.Column("index_updated_at", _TS, nullable=True),
        _text("index_updated_by"),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("project_id", sa.Text(), sa.ForeignKey("projects.id"), nullable=False),
        _text("name"),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("input", postgresql.JSONB(), nullable=False),
        _text("role"),
        _text("model"),
        sa.Column("labels", postgresql.JSONB(), nullable=False, server_default=_EMPTY_OBJECT),
        sa.Column("requires_approval", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("approved", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("context_budget", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _text("status_reason"),
        _text("hold_reason"),
        sa.Column("created_at", _TS, nullable=False),
        _text("created_by"),
        sa.Column("updated_at", _TS, nullable=False),
        _text("updated_by"),
        sa.Column("closed_at", _TS, nullable=True),
        _text("closed_by"),
    )
    op.create_index("tasks_project_order_idx", "tasks", ["project_id", "priority", "created_at", "id"])
    op.create_table(
        "task_notes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("task_id", sa.BigInteger(), sa.ForeignKey("tasks.id"), nullable=False),
        _text("agent"),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("task_notes_task_id_idx", "task_notes", ["task_id", "id"])
    op.create_table(
        "task_links",
        sa.Column("from_task", sa.BigInteger(), sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Column("to_task", sa.BigInteger(), sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Column("kind", sa.Text(), primary_key=True),
        sa.Column("created_at", _TS, nullable=False),
        _text("created_by"),
    )
    op.create_index("task_links_to_task_idx", "task_links", ["to_task"])
    op.create_table(
        "context_overrides",
        sa.Column("task_id", sa.BigInteger(), sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Column("pins", postgresql.JSONB(), nullable=False, server_default=_EMPTY_ARRAY),
        sa.Column("excludes", postgresql.JSONB(), nullable=False, server_default=_EMPTY_ARRAY),
        _text("set_by"),
        sa.Column("set_at", _TS, nullable=False),
    )
    op.create_table(
        "context_snapshots",
        sa.Column("hash", sa.Text(), primary_key=True),
        sa.Column("items", postgresql.JSONB(), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("counter", sa.Text(), nullable=False),
        sa.Column("exact", sa.Boolean(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "task_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("task_id", sa.BigInteger(), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("project_id", sa.Text(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("context_hash", sa.Text(), sa.ForeignKey("context_snapshots.hash"), nullable=True),
        # No foreign key to jobs: a run may name its job before the job's row is written.
        sa.Column("job_id", postgresql.UUID(as_uuid=False), nullable=True),
        sa.Column("rerun_of", sa.BigInteger(), sa.ForeignKey("task_runs.id"), nullable=True),
        _text("model"),
        _text("engine"),
        _text("weights_digest"),
        sa.Column("sampling", postgresql.JSONB(), nullable=False, server_default=_EMPTY_OBJECT),
        sa.Column("routing_report", postgresql.JSONB(), nullable=False, server_default=_EMPTY_OBJECT),
        sa.Column("input_tokens", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("output_tokens", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("cost", sa.Double(), nullable=False, server_default=sa.text("0")),
        _text("output"),
        _text("end_reason"),
        _text("end_message"),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("ended_at", _TS, nullable=True),
        _text("started_by"),
    )
    op.create_index("task_runs_task_id_idx", "task_runs", ["task_id", sa.text("id DESC")])
    op.create_index("task_runs_project_id_idx", "task_runs", ["project_id", sa.text("id DESC")])


def downgrade() -> None:
    op.drop_table("task_runs")
    op.drop_table("context_snapshots")
    op.drop_table("context_overrides")
    op.drop_table("task_links")
    op.drop_table("task_notes")
    op.drop_table("tasks")
    op.drop_table("projects")
