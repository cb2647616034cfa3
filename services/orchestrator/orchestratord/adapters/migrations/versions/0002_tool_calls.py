"""Tool calls of a job and the finish reason of its run.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("tool_calls", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    op.add_column("runs", sa.Column("finish_reason", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("runs", "finish_reason")
    op.drop_column("jobs", "tool_calls")
