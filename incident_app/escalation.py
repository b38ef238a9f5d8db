"""Escalation of incidents left open: at most MAX_LEVEL times, each level exactly once whatever the
number of workers and replicas, because a level is taken by a conditional, locked update."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine, Row

from incident_app.lifecycle import note_entry
from incident_app.metrics import IncidentMetrics
from incident_app.outbox import NotificationOutbox, Pending
from incident_app.peers.oncall import OnCallClient
from incident_app.repository import escalations as queries
from incident_app.repository import events
from incident_app.repository import incidents as repo
from incident_app.transactions import reading, transaction

log = logging.getLogger(__name__)

MAX_LEVEL = 3
SYSTEM = "system"
BATCH = 50


def escalation_message(incident_id: str, title: str, severity: str, level: int) -> str:
    return f"[ESCALATION {level}/{MAX_LEVEL}] [{severity.upper()}] {title} — {incident_id} is still unacknowledged"


class Escalator:
    def __init__(
        self, *, engine: Engine, oncall: OnCallClient, outbox: NotificationOutbox, metrics: IncidentMetrics,
        timeout: timedelta, clock: Callable[[], datetime],
    ) -> None:
        self.engine = engine
        self.oncall = oncall
        self.outbox = outbox
        self.metrics = metrics
        self.timeout = timeout
        self.clock = clock

    def escalate_due(self, *, now: datetime | None = None) -> int:
        """Escalate every incident due now by one level. Returns how many this call escalated."""
        as_of = now
        now = now or self.clock()
        opened_before = now - self.timeout
        with reading(self.engine) as conn:
            due = queries.due_incidents(conn, opened_before=opened_before, max_level=MAX_LEVEL, limit=BATCH)
        escalated = 0
        secondaries: dict[str, str | None] = {}
        for candidate in due:
            if candidate.service not in secondaries:
                # Asked before taking the lock: a slow On-Call Service must not hold a row locked.
                secondaries[candidate.service] = self.oncall.current(candidate.service).secondary
            pending = self._escalate_one(candidate, secondaries[candidate.service], opened_before, now)
            if pending is not None:
                escalated += 1
                self.outbox.deliver(pending, now=as_of)
        return escalated

    def _escalate_one(
        self, candidate: Row, secondary: str | None, opened_before: datetime, now: datetime
    ) -> Pending | None:
        with transaction(self.engine, write=True) as conn:
            row = queries.lock_if_still_due(
                conn, candidate.id, level=candidate.escalation_level, opened_before=opened_before
            )
            if row is None:
                return None  # acknowledged, resolved or escalated by someone else meanwhile
            level = row.escalation_level + 1
            assignee = secondary or row.assigned_to
            minutes = self.timeout.total_seconds() / 60
            note = (
                f"Escalated to level {level}: still open {minutes:g} minutes after "
                f"{'the last escalation' if row.escalated_at else 'creation'}; "
                + (f"reassigned to on-call secondary {secondary}." if secondary and secondary != row.assigned_to
                   else "no other on-call engineer, notifying the assignee again.")
            )
            system_note = note_entry(note, SYSTEM, now)
            changes = {
                "escalation_level": level, "escalated_at": now, "updated_at": now,
                "notes": [*row.notes, system_note],
            }
            if assignee != row.assigned_to:
                changes["assigned_to"] = assignee
            updated = repo.update_incident(row.id, changes).execute(conn).one()
            events.record_event(conn, row.id, "escalated", at=now, actor=SYSTEM,
                                details={"level": level, "assigned_to": assignee})
            if assignee != row.assigned_to:
                events.record_event(conn, row.id, "reassigned", at=now, actor=SYSTEM,
                                    details={"from": row.assigned_to, "to": assignee})
            events.record_event(conn, row.id, "note_added", at=now, actor=SYSTEM, details=system_note)
            pending = self.outbox.enqueue(
                conn, incident=updated, engineer=assignee or row.service,
                message=escalation_message(row.incident_id, row.title, row.severity, level), now=now,
            )
        self.metrics.escalated(row.severity)
        log.info("incident escalated", extra={"incident_id": row.incident_id, "escalation_level": level})
        return pending
