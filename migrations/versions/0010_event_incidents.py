"""The live feed's events carry their incident as it stood after the change (contract 7, "The
event"): each timeline row keeps that incident's list item as JSON text, written by the statement
that writes the event (repository/items.py), so that a follower who replays the feed a day later,
or a webhook retried an hour later, sees what the change made, not what came after it.

Events written before this revision, or by hand, have none: the feed shows their incident as it
stands when it reads them, as it did before. No rewrite of the table: a nullable column without a
default is only metadata.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SCHEMA = "incidents"


def _table() -> str:
    return f"{SCHEMA}.incident_events" if op.get_bind().dialect.name == "postgresql" else "incident_events"


def upgrade() -> None:
    op.execute(f"ALTER TABLE {_table()} ADD COLUMN incident TEXT")


def downgrade() -> None:
    op.execute(f"ALTER TABLE {_table()} DROP COLUMN incident")
