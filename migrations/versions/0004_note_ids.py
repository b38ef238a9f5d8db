"""Notes named as PagerDuty's and the platform's web UI name them: `text` becomes `content`, and
each note gets an `id` (UUID). The `note_added` events carry the note they added, as stored.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
PAGE = 1000

_document = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _tables() -> tuple[sa.TableClause, sa.TableClause]:
    # Migrations run without the engine's schema map: SQLite has no `incidents` schema.
    schema = SCHEMA if op.get_bind().dialect.name == "postgresql" else None
    incidents = sa.table("incidents", sa.column("id", sa.Uuid()), sa.column("notes", _document), schema=schema)
    events = sa.table(
        "incident_events", sa.column("id", sa.BigInteger()), sa.column("incident_id", sa.Uuid()),
        sa.column("type", sa.String()), sa.column("details", _document), schema=schema,
    )
    return incidents, events


def _with_notes(incidents: sa.TableClause) -> sa.ColumnElement[bool]:
    length = "jsonb_array_length" if op.get_bind().dialect.name == "postgresql" else "json_array_length"
    return getattr(sa.func, length)(incidents.c.notes) > 0


def _pages(table: sa.TableClause, *columns: sa.ColumnElement[Any], where: sa.ColumnElement[bool]):
    """The rows of `table` matching `where`, a page at a time, by id (keyset: each page is one
    indexed range, however large the table)."""
    conn = op.get_bind()
    last = None
    while True:
        query = sa.select(table.c.id, *columns).where(where).order_by(table.c.id).limit(PAGE)
        rows = conn.execute(query if last is None else query.where(table.c.id > last)).all()
        if not rows:
            return
        yield rows
        last = rows[-1].id


def _update(table: sa.TableClause, column: str, changed: list[dict[str, Any]]) -> None:
    if changed:
        statement = table.update().where(table.c.id == sa.bindparam("pk")).values({column: sa.bindparam("value")})
        op.get_bind().execute(statement, changed)


def _renamed(old: dict[str, Any]) -> dict[str, Any]:
    """`text` as `content`, the rest as it was."""
    return {"content": old.get("text"), **{key: value for key, value in old.items() if key != "text"}}


def _new_note(old: dict[str, Any]) -> dict[str, Any]:
    if "content" in old:
        return old  # already in the new shape
    return {"id": str(uuid.uuid4()), **_renamed(old)}


def _old_note(new: dict[str, Any]) -> dict[str, Any]:
    if "content" not in new:
        return new
    rest = {key: value for key, value in new.items() if key not in ("id", "content")}
    return {"text": new["content"], **rest}


def _rewrite_event_details(rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    _, events = _tables()
    for rows in _pages(events, events.c.details, where=events.c.type == "note_added"):
        changed = [{"pk": row.id, "value": rewrite(row.details)} for row in rows]
        _update(events, "details", [c for c, row in zip(changed, rows, strict=True) if c["value"] != row.details])


def upgrade() -> None:
    incidents, events = _tables()
    for rows in _pages(incidents, incidents.c.notes, where=_with_notes(incidents)):
        notes = {row.id: [_new_note(note) for note in row.notes] for row in rows}
        _update(incidents, "notes", [{"pk": pk, "value": value} for pk, value in notes.items()])
        # Every note was added with one note_added event, in the same order: each event takes its
        # note's id, author and time. An incident whose events do not match its notes keeps its
        # events' own text, under its new name, below.
        added = op.get_bind().execute(
            sa.select(events.c.id, events.c.incident_id, events.c.details)
            .where(events.c.type == "note_added", events.c.incident_id.in_(list(notes)))
            .order_by(events.c.incident_id, events.c.id)
        ).all()
        by_incident: dict[uuid.UUID, list[Any]] = {}
        for event in added:
            by_incident.setdefault(event.incident_id, []).append(event)
        paired = []
        for pk, incident_events in by_incident.items():
            texts = [event.details.get("text") for event in incident_events]
            if texts == [note["content"] for note in notes[pk]]:
                paired += [{"pk": e.id, "value": note} for e, note in zip(incident_events, notes[pk], strict=True)]
        _update(events, "details", paired)
    _rewrite_event_details(lambda details: _renamed(details) if "text" in details else details)


def downgrade() -> None:
    incidents, _ = _tables()
    for rows in _pages(incidents, incidents.c.notes, where=_with_notes(incidents)):
        _update(incidents, "notes", [{"pk": row.id, "value": [_old_note(n) for n in row.notes]} for row in rows])
    _rewrite_event_details(lambda details: {"text": details["content"]} if "content" in details else details)
