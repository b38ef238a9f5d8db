"""Analytics from indexes: a time window is an index-only range scan with both durations already
computed, and with no filter each percentile is read at its ranks from a duration's own index.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
WINDOW = "ix_incidents_analytics_window"
DURATIONS = {"mtta": "acknowledged_at", "mttr": "resolved_at"}  # the later timestamp of each


def _seconds(later: str, postgres: bool) -> sa.TextClause:
    """incident_app.tables.seconds_between, as each dialect renders it."""
    if postgres:
        return sa.text(f"date_part('epoch', {later} - created_at)")

    def whole(value: str) -> str:
        return f"CAST(strftime('%s', substr({value}, 1, 19)) AS INTEGER)"

    def fraction(value: str) -> str:
        return f"CAST(substr({value}, 20) AS REAL)"

    return sa.text(f"(({whole(later)} - {whole('created_at')}) + ({fraction(later)} - {fraction('created_at')}))")


def upgrade() -> None:
    # Index entries are built from the rows already there: nothing else to back-fill.
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_index(
        WINDOW, "incidents", ["created_at", *(_seconds(later, postgres) for later in DURATIONS.values())],
        schema=SCHEMA, postgresql_include=["service", "severity", "status", *DURATIONS.values()],
    )
    for name, later in DURATIONS.items():
        present = sa.text(f"{later} IS NOT NULL")
        op.create_index(
            f"ix_incidents_{name}_seconds", "incidents", [_seconds(later, postgres)], schema=SCHEMA,
            postgresql_include=["created_at", later], postgresql_where=present, sqlite_where=present,
        )


def downgrade() -> None:
    for name in reversed(DURATIONS):
        op.drop_index(f"ix_incidents_{name}_seconds", "incidents", schema=SCHEMA)
    op.drop_index(WINDOW, "incidents", schema=SCHEMA)
