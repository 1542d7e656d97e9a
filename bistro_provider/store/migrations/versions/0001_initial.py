"""Create the ledger, status, capacity override, audit and published state tables.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "bistro_grant",
        sa.Column("ti_id", sa.String(36), primary_key=True),
        sa.Column("dag_id", sa.String(250), nullable=False, index=True),
        sa.Column("task_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("map_index", sa.Integer, nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("job", sa.String(250), nullable=False, index=True),
        sa.Column("node", sa.String(1024), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("holdings", sa.Text, nullable=False),
        sa.Column("worker", sa.String(250), nullable=False),
        sa.Column("granted_at", sa.Float, nullable=False),
        sa.Column("owner", sa.String(250), nullable=False),
    )
    op.create_table(
        "bistro_task_status",
        sa.Column("job", sa.String(250), primary_key=True),
        sa.Column("node", sa.String(1024), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("backoff", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
    )
    op.create_table(
        "bistro_capacity_override",
        sa.Column("level", sa.String(250), primary_key=True),
        sa.Column("node", sa.String(1024), primary_key=True),
        sa.Column("resource", sa.String(250), primary_key=True),
        sa.Column("amount", sa.Integer, nullable=False),
    )
    op.create_table(
        "bistro_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False, index=True),
        sa.Column("user", sa.String(250), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("old_value", sa.Text, nullable=False),
        sa.Column("new_value", sa.Text, nullable=False),
    )
    op.create_table(
        "bistro_published_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("owner", sa.String(250), nullable=False),
    )


def downgrade() -> None:
    for table in ("bistro_published_state", "bistro_audit", "bistro_capacity_override", "bistro_task_status", "bistro_grant"):
        op.drop_table(table)
