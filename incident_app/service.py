"""Use cases: each one transaction, side effects (metrics, peers) after it commits."""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

from incident_app import lifecycle
from incident_app.db import transaction
from incident_app.errors import IncidentNotFound, NothingToUpdate
from incident_app.metrics import IncidentMetrics
from incident_app.peers.notify import CHANNEL, NotificationClient
from incident_app.peers.oncall import OnCallClient
from incident_app.repository import analytics as analytics_queries
from incident_app.repository import incidents as repo

log = logging.getLogger(__name__)

INCIDENT_ID = re.compile(r"inc-[0-9a-f]{16}")
_ID_ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_incident_id() -> str:
    return f"inc-{secrets.token_hex(8)}"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Update:
    """What a PATCH changed. `transition` is set only for the request that made the status change."""

    incident: dict[str, Any]
    transition: lifecycle.Transition | None


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return (later - earlier).total_seconds() if later is not None else None


def incident_document(row: Row, alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    document = dict(row._mapping)
    document["mtta_seconds"] = _seconds(row.acknowledged_at, row.created_at)
    document["mttr_seconds"] = _seconds(row.resolved_at, row.created_at)
    if alerts is not None:
        document["alerts"] = alerts
    return document


class IncidentService:
    def __init__(
        self,
        *,
        engine: Engine,
        oncall: OnCallClient,
        notifier: NotificationClient,
        metrics: IncidentMetrics,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.oncall = oncall
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock

    # ------------------------------------------------------------------ create

    def open_incident(
        self,
        *,
        title: str,
        service: str,
        severity: str,
        description: str | None = None,
        alert_ids: Sequence[uuid.UUID] = (),
    ) -> dict[str, Any]:
        row = self._insert_with_fresh_id(
            title=title, service=service, severity=severity, description=description, alert_ids=alert_ids
        )
        self.metrics.incident_opened(severity)

        assignee = self.oncall.current(service).primary
        if assignee is not None:
            with transaction(self.engine, write=True) as conn:
                row = repo.update_incident(conn, row.id, {"assigned_to": assignee, "updated_at": self.clock()})
        self._notify(row, engineer=assignee or service)

        with transaction(self.engine) as conn:
            alerts = repo.linked_alerts(conn, [row.id])[row.id]
        return incident_document(row, alerts)

    def _insert_with_fresh_id(self, *, alert_ids: Sequence[uuid.UUID], **fields: Any) -> Row:
        now = self.clock()
        for attempt in range(1, _ID_ATTEMPTS + 1):
            values = {
                **fields,
                "id": uuid.uuid4(),
                "incident_id": new_incident_id(),
                "status": lifecycle.Status.OPEN.value,
                "notes": [],
                "created_at": now,
                "updated_at": now,
            }
            try:
                with transaction(self.engine, write=True) as conn:
                    row = repo.insert_incident(conn, values)
                    repo.link_alerts(conn, row.id, alert_ids, now)
                return row
            except sa.exc.IntegrityError:
                # 64 random bits: a collision is rare, and is met with a new id, never a 500.
                if attempt == _ID_ATTEMPTS:
                    raise
                log.warning("incident id collision, retrying", extra={"attempt": attempt})
        raise AssertionError("unreachable")

    def _notify(self, row: Row, *, engineer: str) -> bool:
        delivered = self.notifier.send(
            {
                "incident_id": row.incident_id,
                "engineer": engineer,
                "channel": CHANNEL,
                "message": f"[{row.severity.upper()}] {row.title} ({row.service}) — {row.incident_id}",
                "severity": row.severity,
            }
        )
        self.metrics.notification_attempted(CHANNEL, delivered)
        return delivered

    # ------------------------------------------------------------------ read

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        if not INCIDENT_ID.fullmatch(incident_id):
            raise IncidentNotFound(incident_id)
        with transaction(self.engine) as conn:
            row = repo.find_incident(conn, incident_id)
            if row is None:
                raise IncidentNotFound(incident_id)
            alerts = repo.linked_alerts(conn, [row.id])[row.id]
        return incident_document(row, alerts)

    def list_incidents(self, filters: repo.ListFilters, *, limit: int, offset: int) -> dict[str, Any]:
        with transaction(self.engine) as conn:
            rows, total = repo.list_incidents(conn, filters, limit=limit, offset=offset)
        return {"incidents": [incident_document(r) for r in rows], "total": total, "limit": limit, "offset": offset}

    def analytics(self, filters: analytics_queries.AnalyticsFilters) -> dict[str, Any]:
        with transaction(self.engine) as conn:
            return analytics_queries.incident_analytics(conn, filters)

    # ------------------------------------------------------------------ update

    def update_incident(
        self,
        incident_id: str,
        *,
        status: str | None = None,
        assigned_to: str | None = UNSET,
        note: str | None = None,
        author: str | None = None,
    ) -> Update:
        """Apply a PATCH atomically. The row is locked for the decision, so under concurrency each
        transition is made by exactly one request; the others see it done and change nothing."""
        if status is None and assigned_to is UNSET and note is None:
            raise NothingToUpdate()
        if not INCIDENT_ID.fullmatch(incident_id):
            raise IncidentNotFound(incident_id)

        with transaction(self.engine, write=True) as conn:
            row = repo.find_incident(conn, incident_id, for_update=True)
            if row is None:
                raise IncidentNotFound(incident_id)
            now = self.clock()
            changes: dict[str, Any] = {}
            transition = lifecycle.plan_transition(row.status, status) if status is not None else None
            if transition is not None:
                changes["status"] = transition.to_status
                changes["acknowledged_at" if transition.acknowledges else "resolved_at"] = now
            if assigned_to is not UNSET and assigned_to != row.assigned_to:
                changes["assigned_to"] = assigned_to
            if note is not None:
                entry = {"text": note, "author": author, "created_at": now.isoformat(timespec="microseconds")}
                changes["notes"] = [*row.notes, entry]
            if changes:
                row = repo.update_incident(conn, row.id, {**changes, "updated_at": now})
            alerts = repo.linked_alerts(conn, [row.id])[row.id]

        if transition is not None:
            self.metrics.status_changed(transition, row.severity, (now - row.created_at).total_seconds())
        return Update(incident_document(row, alerts), transition)
