"""Stored responses of the OpenAI Responses API (``POST /v1/responses`` with
``store``), for ``previous_response_id`` and ``GET /v1/responses/{id}``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("project_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("job_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("previous_response_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("messages", postgresql.JSONB(), nullable=False),
        sa.Column("body", postgresql.JSONB(), nullable=False),
    )
    op.create_index("responses_project_id_idx", "responses", ["project_id", "created_at"])


def downgrade() -> None:
    op.drop_index("responses_project_id_idx", table_name="responses")
    op.drop_table("responses")
