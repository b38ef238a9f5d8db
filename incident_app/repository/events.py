"""The timeline: events appended in the caller's transaction, read oldest first."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from incident_app.tables import incident_events


def record_event(
    conn: Connection,
    incident_pk: uuid.UUID,
    event_type: str,
    *,
    at: datetime,
    actor: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        incident_events.insert().values(
            incident_id=incident_pk, type=event_type, actor=actor, details=dict(details or {}), created_at=at
        )
    )


def list_events(conn: Connection, incident_pk: uuid.UUID) -> list[dict[str, Any]]:
    # The serial id breaks ties between events of one transaction, which share a timestamp.
    rows = conn.execute(
        sa.select(incident_events.c.type, incident_events.c.created_at, incident_events.c.actor,
                  incident_events.c.details)
        .where(incident_events.c.incident_id == incident_pk)
        .order_by(incident_events.c.created_at, incident_events.c.id)
    ).mappings()
    return [dict(row) for row in rows]
