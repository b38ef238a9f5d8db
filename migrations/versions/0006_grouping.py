"""Alert grouping (contract section 8): an incident's `dedup_key`, how many requests were folded
into it and when the last one was; a partial unique index lets one unresolved incident per key
exist, so the database decides which concurrent create opens it. An Idempotency-Key remembers
whether its request was grouped, so that a replay answers as the first did.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
UNIQUE_UNRESOLVED = "uq_incidents_dedup_key_unresolved"
BY_KEY = "ix_incidents_dedup_key_created_at"
# The same text as incident_app.tables.UNRESOLVED: ON CONFLICT names this predicate to infer the index.
UNRESOLVED = "dedup_key IS NOT NULL AND status <> 'resolved'"  # tables.UNRESOLVED
HAS_KEY = "dedup_key IS NOT NULL"  # tables.HAS_KEY: incidents without a key are in neither index


def _columns() -> list[sa.Column]:
    return [
        sa.Column("dedup_key", sa.String(255)),
        sa.Column("grouped_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_grouped_at", sa.DateTime(timezone=True)),
    ]


def upgrade() -> None:
    schema = SCHEMA if op.get_bind().dialect.name == "postgresql" else None
    # Plain ALTER TABLEs on SQLite too: a batch would copy the table and lose 0003's triggers.
    for column in _columns():
        op.add_column("incidents", column, schema=schema)
    op.create_index(UNIQUE_UNRESOLVED, "incidents", ["dedup_key"], unique=True, schema=schema,
                    postgresql_where=sa.text(UNRESOLVED), sqlite_where=sa.text(UNRESOLVED))
    # The list's dedup_key filter, newest first, resolved incidents included.
    op.create_index(BY_KEY, "incidents", ["dedup_key", sa.text("created_at DESC"), sa.text("incident_id DESC")],
                    schema=schema, postgresql_where=sa.text(HAS_KEY), sqlite_where=sa.text(HAS_KEY))
    op.add_column("idempotency_keys", sa.Column("grouped", sa.Boolean(), nullable=False, server_default=sa.false()),
                  schema=schema)


def downgrade() -> None:
    schema = SCHEMA if op.get_bind().dialect.name == "postgresql" else None
    op.drop_column("idempotency_keys", "grouped", schema=schema)
    op.drop_index(BY_KEY, table_name="incidents", schema=schema)
    op.drop_index(UNIQUE_UNRESOLVED, table_name="incidents", schema=schema)
    for column in reversed(_columns()):
        op.drop_column("incidents", column.name, schema=schema)
