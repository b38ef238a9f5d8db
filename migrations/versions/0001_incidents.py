"""Incidents and their linked alerts.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "incidents"
SEVERITIES = ("critical", "high", "medium", "low")
STATUSES = ("open", "acknowledged", "resolved")


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        "incidents",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("incident_id", sa.String(255), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("severity", sa.Enum(*SEVERITIES, name="severity_level", schema=SCHEMA), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*STATUSES, name="incident_status", schema=SCHEMA),
            nullable=False,
            server_default="open",
        ),
        sa.Column("assigned_to", sa.String(255)),
        sa.Column(
            "notes",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
            server_default=sa.text("'[]'"),
        ),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("acknowledged_at", timestamp),
        sa.Column("resolved_at", timestamp),
        sa.Column("updated_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
        sa.UniqueConstraint("incident_id", name="uq_incidents_incident_id"),
        schema=SCHEMA,
    )
    newest_first = [sa.text("created_at DESC"), sa.text("incident_id DESC")]
    op.create_index("ix_incidents_created_at", "incidents", newest_first, schema=SCHEMA)
    for column in ("status", "severity", "service"):
        op.create_index(f"ix_incidents_{column}_created_at", "incidents", [column, *newest_first], schema=SCHEMA)

    op.create_table(
        "incident_alerts",
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("alert_id", sa.Uuid(), nullable=False),
        sa.Column("linked_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("incident_id", "alert_id", name="pk_incident_alerts"),
        sa.ForeignKeyConstraint(
            ["incident_id"], [f"{SCHEMA}.incidents.id"],
            name="fk_incident_alerts_incident_id_incidents", ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_incident_alerts_alert_id", "incident_alerts", ["alert_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("incident_alerts", schema=SCHEMA)
    op.drop_table("incidents", schema=SCHEMA)
    sa.Enum(name="incident_status", schema=SCHEMA).drop(op.get_bind(), checkfirst=True)
    sa.Enum(name="severity_level", schema=SCHEMA).drop(op.get_bind(), checkfirst=True)
