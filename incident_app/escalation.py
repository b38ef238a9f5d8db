"""Escalation of incidents left open: at most MAX_LEVEL times, each level exactly once whatever the
number of workers and replicas, because a level is taken by a conditional, locked update."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine, Row

from incident_app.lifecycle import note_entry
from incident_app.metrics import IncidentMetrics
from incident_app.outbox import NotificationOutbox, Pending
from incident_app.peers.oncall import OnCallClient
from incident_app.repository import escalations as queries
from incident_app.repository import events
from incident_app.transactions import reading, transaction

log = logging.getLogger(__name__)

MAX_LEVEL = 3
SYSTEM = "system"
# Incidents claimed and escalated in one transaction; their pages then go out side by side.
BATCH = 50
PARALLEL_PAGES = 32
# Seconds after its commit within which an escalation's page may still be sent here: its lease
# (HTTP_CLIENT_TIMEOUT + 5 s) then still covers a whole call.
PAGE_START_WITHIN = 4.0


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
        """Escalate every incident due now by one level, a batch after another until none is left.
        Returns how many this call escalated.

        A batch is claimed, escalated and committed in one transaction (rows locked elsewhere are
        skipped), then its pages go out side by side. Each incident is escalated as of its own
        moment in that transaction, and its page is leased from then: dated from the start of a
        batch that escalated one by one, a page once waited behind the others until its lease ran
        out and another worker sent it again.
        """
        escalated = 0
        secondaries: dict[str, str | None] = {}
        # Threads are greenlets under gevent: pages go out side by side while later batches are
        # claimed, so that a thousand due at once are all escalated within seconds.
        with ThreadPoolExecutor(max_workers=PARALLEL_PAGES) as pages_out:
            while True:
                checked_at = now or self.clock()
                with reading(self.engine) as conn:
                    due = queries.due_incidents(
                        conn, opened_before=checked_at - self.timeout, max_level=MAX_LEVEL, limit=BATCH
                    )
                if not due:
                    return escalated
                for service in {candidate.service for candidate in due} - secondaries.keys():
                    # Asked before taking the locks: a slow On-Call Service must not hold rows locked.
                    secondaries[service] = self.oncall.current(service).secondary
                committed_at = time.monotonic()
                pages = self._escalate_batch(secondaries, as_of=now)
                for pending in pages:
                    pages_out.submit(self._page, pending, committed_at=committed_at, as_of=now)
                escalated += len(pages)
                if not pages:  # none left that another worker does not hold
                    return escalated

    def _page(self, pending: Pending, *, committed_at: float, as_of: datetime | None) -> None:
        # The page's row is leased for a whole call from its commit (HTTP_CLIENT_TIMEOUT + 5 s): a
        # page that could not start within PAGE_START_WITHIN of it is left to the background work,
        # which takes it when the lease ends, rather than sent by both.
        if as_of is None and time.monotonic() - committed_at > PAGE_START_WITHIN:
            return
        self.outbox.deliver(pending, now=as_of)

    def _escalate_batch(self, secondaries: dict[str, str | None], *, as_of: datetime | None) -> list[Pending]:
        """Claim a batch of due incidents of the services whose secondary is known, escalate them
        in one write and commit; their pages, not yet sent."""
        escalated: list[Row] = []
        changes: list[dict[str, Any]] = []
        timeline: list[dict[str, Any]] = []
        pages: list[Pending] = []
        notifications: list[dict[str, Any]] = []
        with transaction(self.engine, write=True) as conn:
            claimed_at = as_of or self.clock()
            claimed = queries.claim_due(conn, opened_before=claimed_at - self.timeout, max_level=MAX_LEVEL,
                                        services=list(secondaries), limit=BATCH)
            for row in claimed:
                # Each incident's own moment: the time it is escalated, not the batch's start.
                now = as_of or self.clock()
                change, row_events, page, notification = self._escalation(row, secondaries.get(row.service), now)
                escalated.append(row)
                changes.append(change)
                timeline.extend(row_events)
                pages.append(page)
                notifications.append(notification)
            queries.record_escalations(conn, changes, timeline, notifications)
        for row in escalated:
            self.metrics.escalated(row.severity)
            log.info("incident escalated", extra={"incident_id": row.incident_id,
                                                  "escalation_level": row.escalation_level + 1})
        return pages

    def _escalation(
        self, row: Row, secondary: str | None, now: datetime
    ) -> tuple[dict[str, Any], list[dict[str, Any]], Pending, dict[str, Any]]:
        """One level for a locked row: its changed columns, its events, its page and the page's outbox row."""
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
        change = {
            "id": row.id, "escalation_level": level, "escalated_at": now, "updated_at": now,
            "notes": [*row.notes, system_note], "assigned_to": assignee,
        }
        timeline = [events.event(row.id, "escalated", at=now, actor=SYSTEM,
                                 details={"level": level, "assigned_to": assignee})]
        if assignee != row.assigned_to:
            timeline.append(events.event(row.id, "reassigned", at=now, actor=SYSTEM,
                                         details={"from": row.assigned_to, "to": assignee}))
        timeline.append(events.event(row.id, "note_added", at=now, actor=SYSTEM, details=system_note))
        page, notification = self.outbox.prepare(
            incident_pk=row.id, incident_id=row.incident_id, severity=row.severity,
            engineer=assignee or row.service,
            message=escalation_message(row.incident_id, row.title, row.severity, level), now=now,
        )
        return change, timeline, page, notification
