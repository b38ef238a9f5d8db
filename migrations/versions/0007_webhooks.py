"""Webhooks: subscriptions, and one delivery row per matching event, written by the database in the
transaction that writes the event (a trigger on the timeline), whichever path wrote it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
FUNCTION = f"{SCHEMA}.enqueue_webhook_deliveries"
TRIGGER = "incident_events_enqueue_webhooks"

# Statement-level, over the statement's new rows: a group commit's hundreds of events are matched
# against the subscriptions in one INSERT … SELECT. The incident is read as the statement left it,
# so `service` and `severity` filter on the incident after the change. Each delivery is due at its
# event's time (the application's clock, which also decides when it is due).
_FUNCTION_SQL = f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {SCHEMA}.webhook_deliveries
        (id, webhook_id, event_id, state, attempts, created_at, next_attempt_at)
    SELECT gen_random_uuid(), w.id, e.id, 'pending', 0, e.created_at, e.created_at
    FROM new_events e
    JOIN {SCHEMA}.incidents i ON i.id = e.incident_id
    JOIN {SCHEMA}.webhooks w
      ON (w.types IS NULL OR w.types ? e.type)
     AND (w.service IS NULL OR w.service = i.service)
     AND (w.severity IS NULL OR w.severity = i.severity);
    RETURN NULL;
END
$$
"""

# SQLite: a row trigger does the same per event; a UUID is 32 hex digits there (SQLAlchemy's Uuid).
_SQLITE_TRIGGER_SQL = f"""
CREATE TRIGGER {TRIGGER} AFTER INSERT ON incident_events
BEGIN
    INSERT INTO webhook_deliveries (id, webhook_id, event_id, state, attempts, created_at, next_attempt_at)
    SELECT lower(hex(randomblob(16))), w.id, NEW.id, 'pending', 0, NEW.created_at, NEW.created_at
    FROM incidents i
    JOIN webhooks w
      ON (w.types IS NULL OR EXISTS (SELECT 1 FROM json_each(w.types) WHERE json_each.value = NEW.type))
     AND (w.service IS NULL OR w.service = i.service)
     AND (w.severity IS NULL OR w.severity = i.severity)
    WHERE i.id = NEW.incident_id;
END
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    timestamp = sa.DateTime(timezone=True)
    document = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    severity = postgresql.ENUM(name="severity_level", schema=SCHEMA, create_type=False) if postgres else sa.String(8)

    op.create_table(
        "webhooks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("types", document),
        sa.Column("service", sa.String(255)),
        sa.Column("severity", severity),
        sa.Column("secret", sa.String(255), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
        schema=SCHEMA,
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("webhook_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("next_attempt_at", timestamp, nullable=False),
        sa.Column("finished_at", timestamp),
        sa.Column("body", sa.Text()),
        sa.Column("last_attempt_at", timestamp),
        sa.Column("last_status", sa.String(16)),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.ForeignKeyConstraint(
            ["webhook_id"], [f"{SCHEMA}.webhooks.id"],
            name="fk_webhook_deliveries_webhook_id_webhooks", ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], [f"{SCHEMA}.incident_events.id"],
            name="fk_webhook_deliveries_event_id_incident_events", ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_webhook_deliveries_state_next_attempt_at", "webhook_deliveries", ["state", "next_attempt_at"],
        schema=SCHEMA,
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_id_state", "webhook_deliveries", ["webhook_id", "state"], schema=SCHEMA,
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_id_last_attempt_at", "webhook_deliveries", ["webhook_id", "last_attempt_at"],
        schema=SCHEMA,
    )
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"], schema=SCHEMA)
    if not postgres:
        op.execute(_SQLITE_TRIGGER_SQL)
        return
    op.execute(_FUNCTION_SQL)
    op.execute(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON {SCHEMA}.incident_events"
        f" REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {SCHEMA}.incident_events")
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
    op.drop_table("webhook_deliveries", schema=SCHEMA)
    op.drop_table("webhooks", schema=SCHEMA)
