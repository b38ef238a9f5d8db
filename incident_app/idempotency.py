"""Idempotency-Key on creation: a retry with the same key and body replays the first incident, the
same key with another body is refused (422), and the same key while the first is in flight is a 409.
Keys live in the database for 24 hours, so every worker and replica agrees."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine

from incident_app.errors import IdempotencyKeyInFlight, IdempotencyKeyReused
from incident_app.repository import idempotency as keys
from incident_app.transactions import transaction

KEEP_FOR = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def request_fingerprint(body: Mapping[str, Any]) -> str:
    """The same request, whatever the key order or duplicated alert ids: a hash of the parsed body."""
    canonical = json.dumps(body, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Reservation:
    key: str
    reserved_at: datetime


@dataclass(frozen=True)
class Replay:
    incident_pk: uuid.UUID
    grouped: bool  # the first request was folded into the incident (200) rather than opening it (201)


class IdempotencyKeys:
    def __init__(self, *, engine: Engine, clock: Callable[[], datetime], in_flight_for: timedelta) -> None:
        self.engine = engine
        self.clock = clock
        # A reservation older than this belongs to a request that died: the key may be taken over.
        self.in_flight_for = in_flight_for

    def reserve(self, key: str, fingerprint: str) -> Reservation | Replay:
        now = self.clock()
        with transaction(self.engine, write=True) as conn:
            if keys.try_reserve(conn, key, fingerprint, now=now, expires_at=now + KEEP_FOR):
                return Reservation(key, now)
            row = keys.find_for_update(conn, key)
            if row is None or row.expires_at <= now:
                return self._take_over(conn, key, fingerprint, now, exists=row is not None)
            if row.request_hash != fingerprint:
                raise IdempotencyKeyReused()
            stale = now - row.reserved_at > self.in_flight_for
            if row.incident_id is not None and (row.completed_at is not None or stale):
                return Replay(row.incident_id, row.grouped)
            if row.incident_id is None and stale:
                return self._take_over(conn, key, fingerprint, now, exists=True)
            raise IdempotencyKeyInFlight()

    def _take_over(self, conn: Connection, key: str, fingerprint: str, now: datetime, *, exists: bool) -> Reservation:
        if not exists:  # it went away between the failed reservation and the read: reserve afresh
            keys.try_reserve(conn, key, fingerprint, now=now, expires_at=now + KEEP_FOR)
        else:
            keys.take_over(conn, key, fingerprint, now=now, expires_at=now + KEEP_FOR)
        return Reservation(key, now)

    def attach(self, conn: Connection, reservation: Reservation, incident_pk: uuid.UUID, grouped: bool) -> None:
        """In the creating (or grouping) transaction: the key now names the incident, or the write is undone."""
        if not keys.attach_incident(conn, reservation.key, reserved_at=reservation.reserved_at,
                                    incident_pk=incident_pk, grouped=grouped):
            raise IdempotencyKeyInFlight()

    def complete(self, reservation: Reservation) -> None:
        with transaction(self.engine, write=True) as conn:
            keys.complete(conn, reservation.key, now=self.clock())

    def release(self, reservation: Reservation) -> None:
        with transaction(self.engine, write=True) as conn:
            keys.release(conn, reservation.key, reserved_at=reservation.reserved_at)

    def purge_expired(self) -> int:
        with transaction(self.engine, write=True) as conn:
            return keys.purge_expired(conn, now=self.clock())
