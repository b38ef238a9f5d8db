"""Idempotency keys of creations: reserve, point at the incident, complete, expire."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from incident_app.tables import idempotency_keys, incidents

k = idempotency_keys.c


def try_reserve(conn: Connection, key: str, request_hash: str, *, now: datetime, expires_at: datetime) -> bool:
    """True when this call created the reservation; False when the key already exists."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    result = conn.execute(
        insert(idempotency_keys)
        .values(key=key, request_hash=request_hash, reserved_at=now, expires_at=expires_at)
        .on_conflict_do_nothing()
    )
    return result.rowcount == 1


def find_for_update(conn: Connection, key: str) -> Row | None:
    return conn.execute(sa.select(*idempotency_keys.c).where(k.key == key).with_for_update()).one_or_none()


def take_over(conn: Connection, key: str, request_hash: str, *, now: datetime, expires_at: datetime) -> None:
    """Start the key afresh: it expired, or its first request died before creating anything."""
    conn.execute(
        idempotency_keys.update().where(k.key == key).values(
            request_hash=request_hash, incident_id=None, grouped=False, reserved_at=now, completed_at=None,
            expires_at=expires_at,
        )
    )


def attach_incident(
    conn: Connection, key: str, *, reserved_at: datetime, incident_pk: uuid.UUID, grouped: bool
) -> bool:
    """Point the reservation at its incident (`grouped`: the request was folded into it), unless
    someone has taken the key over meanwhile."""
    result = conn.execute(
        idempotency_keys.update()
        .where(k.key == key, k.reserved_at == reserved_at, k.incident_id.is_(None))
        .values(incident_id=incident_pk, grouped=grouped)
    )
    return result.rowcount == 1


def complete(conn: Connection, key: str, *, now: datetime) -> None:
    conn.execute(idempotency_keys.update().where(k.key == key, k.completed_at.is_(None)).values(completed_at=now))


def release(conn: Connection, key: str, *, reserved_at: datetime) -> None:
    """Forget a reservation whose request failed before creating anything, so a retry can proceed."""
    conn.execute(
        idempotency_keys.delete().where(k.key == key, k.reserved_at == reserved_at, k.incident_id.is_(None))
    )


def purge_expired(conn: Connection, *, now: datetime) -> int:
    return conn.execute(idempotency_keys.delete().where(k.expires_at <= now)).rowcount


def incident_by_pk(conn: Connection, incident_pk: uuid.UUID) -> Row | None:
    """The incident a key names, for a replay."""
    return conn.execute(sa.select(*incidents.c).where(incidents.c.id == incident_pk)).one_or_none()
