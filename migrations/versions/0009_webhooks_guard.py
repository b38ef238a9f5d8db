"""Webhooks: the timeline's delivery trigger returns at once while there is no subscription, instead
of joining every write's events with the incidents and an empty table of subscriptions.

Measured (docs/performance.md): the trigger cost a single-event INSERT about 10 µs of PostgreSQL's
time with no subscription at all; with this guard, about 4 (the transition table is still captured:
leaving it out would take DDL whenever the first subscription comes or the last one goes).

The guard reads the subscriptions in the trigger's own statement, after the writing statement has
locked the timeline; a new subscription takes a SHARE lock on the timeline before it is stored
(repository/webhooks.insert), so an event is either committed before the subscription is stored or
written after it is committed, and then delivered.

SQLite's row trigger (0007) already reads the subscriptions first, under SQLite's single writer:
nothing changes there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Callable

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
FUNCTION = f"{SCHEMA}.enqueue_webhook_deliveries"  # 0007's trigger calls it by name

_GUARD = f"""
    IF NOT EXISTS (SELECT FROM {SCHEMA}.webhooks) THEN
        RETURN NULL;
    END IF;"""


def _rewrite(change: Callable[[str], str]) -> None:
    """Replace the function's body by `change` of it: the guard goes in front of 0007's matching,
    which stays as 0007 wrote it."""
    body = op.get_bind().exec_driver_sql(f"SELECT prosrc FROM pg_proc WHERE oid = '{FUNCTION}'::regproc").scalar_one()
    op.execute(f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $${change(body)}$$")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rewrite(lambda body: body if _GUARD in body else body.replace("BEGIN", "BEGIN" + _GUARD, 1))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rewrite(lambda body: body.replace(_GUARD, "", 1))
