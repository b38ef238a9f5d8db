"""What a create learnt after its first commit (who is on call, that its notification went out):
one operation, two implementations. `record_many`: PostgreSQL, for many new incidents in one
statement (PostgresStore's group commit). `record_one`: any database, statement by statement."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Row

from incident_app.prepared import execute_prepared
from incident_app.repository import events
from incident_app.repository import outbox as outbox_queue
from incident_app.repository.incidents import assign_if_unassigned
from incident_app.repository.items import item_json
from incident_app.repository.outbox import PENDING, SENT
from incident_app.statements import arrays, execute_together, unnest_arrays
from incident_app.tables import incident_events, incidents, notification_outbox


@dataclass(frozen=True, kw_only=True)
class FirstContact:
    """A new incident's on-call assignee as of `assigned_at` (None: nobody on call), and its
    notification delivered: the outbox row as sent, and its `notified` event."""

    incident_pk: uuid.UUID
    assignee: str | None
    assigned_at: datetime
    notification_id: uuid.UUID
    attempts: int
    payload: Mapping[str, Any]
    notified: Mapping[str, Any]  # the `notified` event's details
    sent_at: datetime


def record_one(conn: Connection, contact: FirstContact) -> Row | None:
    """As `record_many`, for one contact: the incident if it assigned it, else None."""
    writes = outbox_queue.delivered(
        notification_id=contact.notification_id, incident_pk=contact.incident_pk, attempts=contact.attempts,
        payload=contact.payload, details=contact.notified, now=contact.sent_at, dialect=conn.dialect.name,
    )
    if contact.assignee is None:
        execute_together(conn, *writes)
        return None
    return assign_if_unassigned(conn, contact.incident_pk, contact.assignee, contact.assigned_at, together=writes)


def record_many(conn: Connection, contacts: Sequence[FirstContact]) -> dict[uuid.UUID, Row]:
    """Each incident gets its assignee, with an `assigned` event, unless it has one already (someone
    assigned it meanwhile: theirs stands); each notification is marked sent (if still pending) with
    its `notified` event. Returns the incidents it assigned, by primary key."""
    # Prepared, as insert_many: one shape for any number of contacts, planned once per connection.
    rows = execute_prepared(conn, _RECORD, arrays([vars(contact) for contact in contacts], _INPUT, "")).all()
    return {row.id: row for row in rows}


_TIMESTAMP = postgresql.TIMESTAMP(timezone=True)
_INPUT = {
    "incident_pk": sa.Uuid(),
    "assignee": sa.String(),
    "assigned_at": _TIMESTAMP,
    "notification_id": sa.Uuid(),
    "attempts": sa.Integer(),
    "payload": postgresql.JSONB(),
    "notified": postgresql.JSONB(),
    "sent_at": _TIMESTAMP,
}


def _record_statement() -> sa.Select:
    # One row per contact, from one array per field: a single statement whatever their number.
    contact = sa.select(unnest_arrays(_INPUT, "", "contact")).cte("contacts")
    assigned = (
        incidents.update()
        .where(incidents.c.id == contact.c.incident_pk, incidents.c.assigned_to.is_(None),
               contact.c.assignee.is_not(None))
        .values(assigned_to=contact.c.assignee, updated_at=contact.c.assigned_at)
        # With its list item, built once for both events of a contact it assigns.
        .returning(*incidents.c, item_json(incidents).label("item"))
        .cte("assigned")
    )

    def timeline(event_type: str, source: sa.FromClause, pk: Any, details: Any, at: Any, incident: Any) -> sa.CTE:
        kind = sa.cast(sa.literal_column(f"'{event_type}'"), incident_events.c.type.type)
        rows = sa.select(pk, kind, sa.null(), details, at, incident).select_from(source)
        return events.with_incident(rows).cte(f"{event_type}_events")

    o = notification_outbox.c
    sent = (
        notification_outbox.update()
        .where(o.id == contact.c.notification_id, o.state == PENDING)
        .values(state=SENT, attempts=contact.c.attempts, finished_at=contact.c.sent_at, payload=contact.c.payload)
        .cte("sent")
    )
    assigned_to = sa.func.jsonb_build_object(sa.literal_column("'assigned_to'"), assigned.c.assigned_to)
    # A `notified` event's incident: as assigned by this statement, or else as it stands.
    notified_incident = sa.case((assigned.c.id.is_not(None), assigned.c.item), else_=item_json(incidents))
    notified_source = (contact.join(incidents, incidents.c.id == contact.c.incident_pk)
                       .outerjoin(assigned, assigned.c.id == contact.c.incident_pk))
    return sa.select(*(assigned.c[column.name] for column in incidents.columns)).add_cte(
        timeline("assigned", assigned, assigned.c.id, assigned_to, assigned.c.updated_at, assigned.c.item),
        sent,
        timeline("notified", notified_source, contact.c.incident_pk, contact.c.notified, contact.c.sent_at,
                 notified_incident),
    )


_RECORD = _record_statement()
