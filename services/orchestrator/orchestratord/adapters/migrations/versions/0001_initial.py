"""Jobs, their event logs and run records.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("request_id", postgresql.UUID(as_uuid=False), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("priority", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("project_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("spec", postgresql.JSONB(), nullable=False),
        sa.Column("route_chain", postgresql.JSONB(), nullable=False),
        sa.Column("routing_report", postgresql.JSONB(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False, server_default=""),
        sa.Column("end_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("end_message", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_index("jobs_request_id_key", "jobs", ["request_id"], unique=True)
    op.create_index("jobs_state_created_at_idx", "jobs", ["state", "created_at"])
    op.create_index("jobs_created_at_idx", "jobs", [sa.text("created_at DESC")])
    op.create_table(
        "job_events",
        sa.Column(
            "job_id",
            postgresql.UUID(as_uuid=False),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sequence", sa.BigInteger(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column(
            "job_id",
            postgresql.UUID(as_uuid=False),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("queue_wait_seconds", sa.Double(), nullable=True),
        sa.Column("time_to_first_token_seconds", sa.Double(), nullable=True),
        sa.Column("total_seconds", sa.Double(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("decode_tokens_per_second", sa.Double(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("engine", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.Text(), nullable=False),
        sa.Column("context_memory_ids", postgresql.JSONB(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("job_events")
    op.drop_index("jobs_created_at_idx", table_name="jobs")
    op.drop_index("jobs_state_created_at_idx", table_name="jobs")
    op.drop_index("jobs_request_id_key", table_name="jobs")
    op.drop_table("jobs")
