"""The live feed: each timeline event records the transaction that wrote it, and every insert into
the timeline wakes the feed's listeners (LISTEN/NOTIFY) when it commits.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
CHANNEL = "incident_feed"  # incident_app.feed.listener.CHANNEL
FUNCTION = f"{SCHEMA}.notify_incident_feed"
TRIGGER = "incident_events_notify_feed"
INDEX = "ix_incident_events_xact_id_id"
# The writing transaction's id as a bigint (an xid8 always fits: epoch and xid in 64 bits).
# incident_app.tables.current_transaction_id renders the same text.
CURRENT_TRANSACTION_ID = "CAST(CAST(pg_current_xact_id() AS text) AS bigint)"

# Statement-level: one NOTIFY per INSERT however many events it writes (a group commit writes
# hundreds), and PostgreSQL folds a transaction's identical notifications into one at commit.
_FUNCTION_SQL = f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        # SQLite: one process is the unit and its writers take turns, so ids commit in order.
        op.execute("ALTER TABLE incident_events ADD COLUMN xact_id BIGINT DEFAULT 0 NOT NULL")
        op.execute(f"CREATE INDEX {INDEX} ON incident_events (xact_id, id)")
        return
    # Events written before this revision are older than any follower's cursor: 0 for them, without
    # a rewrite of the table (a constant default is only metadata); new rows get their transaction's.
    op.execute(f"ALTER TABLE {SCHEMA}.incident_events ADD COLUMN xact_id BIGINT DEFAULT 0 NOT NULL")
    op.execute(f"ALTER TABLE {SCHEMA}.incident_events ALTER COLUMN xact_id SET DEFAULT {CURRENT_TRANSACTION_ID}")
    op.execute(f"CREATE INDEX {INDEX} ON {SCHEMA}.incident_events (xact_id, id)")
    op.execute(_FUNCTION_SQL)
    op.execute(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON {SCHEMA}.incident_events"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {INDEX}")
        op.execute("ALTER TABLE incident_events DROP COLUMN xact_id")
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {SCHEMA}.incident_events")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    op.execute(f"DROP INDEX IF EXISTS {SCHEMA}.{INDEX}")
    op.execute(f"ALTER TABLE {SCHEMA}.incident_events DROP COLUMN xact_id")
