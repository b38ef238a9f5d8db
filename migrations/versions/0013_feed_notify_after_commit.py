"""The feed's trigger leaves the NOTIFY to a session that sends it after its commit (PostgreSQL).

PostgreSQL queues a transaction's notifications under one lock for the whole database, taken at
commit and held through the commit's WAL flush: with a NOTIFY in every write, the writes of every
process committed one after the other, and an acknowledge waited on that lock more than on anything
else. A session that set `incident_feed.notify` to `after_commit` (the service's own: see
incident_app/feed/notifier.py) is told by a NOTICE instead, and its process sends one NOTIFY for the
writes of the moment once they have committed. Any other session (psql, a script, a version of the
service before this one) still notifies from its own commit, as 0005 made it.

SQLite has no trigger for the feed: nothing to do there.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

FUNCTION = "incidents.notify_incident_feed"  # 0005's, called by its statement trigger
CHANNEL = "incident_feed"
SETTING = "incident_feed.notify"  # incident_app.feed.notifier.SESSION_SETTING
NOTICE = "incident_feed: notify after commit"  # incident_app.feed.notifier.NOTICE


def _function(body: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{body}
    RETURN NULL;
END
$$
"""


_NOTIFY = f"    PERFORM pg_notify('{CHANNEL}', '');"
_NOTIFY_AFTER_COMMIT = f"""    IF current_setting('{SETTING}', true) = 'after_commit' THEN
        RAISE NOTICE '{NOTICE}';
    ELSE
    {_NOTIFY}
    END IF;"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(_NOTIFY_AFTER_COMMIT))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(_NOTIFY))
