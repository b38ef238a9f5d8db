"""Reliability: escalation columns, the timeline, the notification outbox, idempotency keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "incidents"


def _schema() -> str | None:
    # ALTER TABLE is rendered without the engine's schema map: SQLite has no `incidents` schema.
    return SCHEMA if op.get_bind().dialect.name == "postgresql" else None


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    document = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    # SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
    serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

    for column in (
        sa.Column("escalation_level", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("escalated_at", timestamp),
    ):
        op.add_column("incidents", column, schema=_schema())
    # Escalation scans open incidents by age: the status index already serves it.

    op.create_table(
        "incident_events",
        sa.Column("id", serial, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(255)),
        sa.Column("details", document, nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incident_events"),
        sa.ForeignKeyConstraint(
            ["incident_id"], [f"{SCHEMA}.incidents.id"],
            name="fk_incident_events_incident_id_incidents", ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_incident_events_incident_id", "incident_events", ["incident_id", "id"], schema=SCHEMA)

    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("payload", document, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("next_attempt_at", timestamp, nullable=False),
        sa.Column("finished_at", timestamp),
        sa.PrimaryKeyConstraint("id", name="pk_notification_outbox"),
        sa.ForeignKeyConstraint(
            ["incident_id"], [f"{SCHEMA}.incidents.id"],
            name="fk_notification_outbox_incident_id_incidents", ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_notification_outbox_state_next_attempt_at", "notification_outbox", ["state", "next_attempt_at"],
        schema=SCHEMA,
    )
    op.create_index("ix_notification_outbox_incident_id", "notification_outbox", ["incident_id"], schema=SCHEMA)

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("incident_id", sa.Uuid()),
        sa.Column("reserved_at", timestamp, nullable=False),
        sa.Column("completed_at", timestamp),
        sa.Column("expires_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(
            ["incident_id"], [f"{SCHEMA}.incidents.id"],
            name="fk_idempotency_keys_incident_id_incidents", ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("idempotency_keys", schema=SCHEMA)
    op.drop_table("notification_outbox", schema=SCHEMA)
    op.drop_table("incident_events", schema=SCHEMA)
    for column in ("escalated_at", "escalation_level"):
        op.drop_column("incidents", column, schema=_schema())
