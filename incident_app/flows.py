"""The create as a flow: what opening an incident does around its first commit, apart from the use
case that calls it (service.py), the way Netflix Dispatch keeps `flows` apart from `service`.

`store_new` is the first commit: the incident with its links, timeline and notification, addressed
to the service and held for the length of the on-call lookup, so a crash at any later point loses
neither the incident nor the page. `assign_and_notify` is everything after it, in the contract's
order: ask On-Call, notify, record the assignment and the delivery, count both. A create whose
`dedup_key` an unresolved incident has is folded into it instead (contract 8): `store_new` answers
Grouped, and `announce_grouped` is all that follows it (no On-Call, no page unless it raised the severity).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from incident_app import lifecycle
from incident_app.errors import DedupKeyContended
from incident_app.metrics import IncidentMetrics
from incident_app.outbox import NotificationOutbox, Pending
from incident_app.peers.oncall import OnCallClient
from incident_app.repository import events
from incident_app.repository import incidents as repo
from incident_app.store import Attach, FirstContact, Store

log = logging.getLogger(__name__)

# Rounds per create. One goes round again after an id collision (rare) or, with a dedup_key, when its
# grouping found no unresolved incident and its insert found the key taken: another create opened the
# incident in between, and the next round groups into it (more rounds only if it is resolved meanwhile).
_ATTEMPTS = 5


def new_incident_id() -> str:
    return f"inc-{secrets.token_hex(8)}"


def notification_message(*, severity: str, title: str, service: str, incident_id: str, **_: Any) -> str:
    return f"[{severity.upper()}] {title} ({service}) — {incident_id}"


@dataclass(frozen=True)
class Stored:
    """A new incident after its first commit: its row, its notification (not yet tried), its alerts."""

    row: Row
    pending: Pending
    alerts: list[dict[str, Any]]


@dataclass(frozen=True)
class Grouped:
    """A create folded into the unresolved incident of its `dedup_key` (committed): the incident and
    the notification of the severity it raised (not yet tried), if it raised it."""

    row: Row
    raised: Pending | None


class IncidentOpening:
    def __init__(
        self, *, store: Store, oncall: OnCallClient, outbox: NotificationOutbox, metrics: IncidentMetrics,
        clock: Callable[[], datetime], oncall_lookup_bound: timedelta,
    ) -> None:
        self.store = store
        self.oncall = oncall
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock
        # How long a new incident's notification waits for the on-call lookup before the
        # background may send it unassigned (only if this process died in between).
        self.oncall_lookup_bound = oncall_lookup_bound

    def store_new(
        self, *, alert_ids: Sequence[uuid.UUID] = (), attach: Attach | None = None, **fields: Any,
    ) -> Stored | Grouped:
        """The first commit, with `attach` (an Idempotency-Key) in its transaction when given.

        With a `dedup_key`, the create is first folded into the unresolved incident that has it (in a
        storm, what almost every request does); when there is none it inserts, and the partial unique
        index decides: an insert another create beat to the key is skipped, and folded into that
        incident instead, in the next round (_ATTEMPTS)."""
        now = self.clock()
        dedup_key = fields.get("dedup_key")
        for attempt in range(1, _ATTEMPTS + 1):
            if dedup_key is not None:
                grouped = self._group(fields, alert_ids, now, attach)
                if grouped is not None:
                    return grouped
            new, pending = self._new_incident(fields, alert_ids, now)
            try:
                if attach is None:
                    row = self.store.insert_new(new)
                else:
                    row = self.store.insert_new_reserved(new, attach=attach)
            except sa.exc.IntegrityError:
                # 64 random bits: a collision is rare, and is met with a new id, never a 500. (In a
                # group commit, every create of the statement tries again, each with a new id.)
                if attempt == _ATTEMPTS:
                    raise
                log.warning("incident id collision, retrying", extra={"attempt": attempt})
                continue
            if row is not None:
                alerts = self.store.new_links(row.id, alert_ids, now) if alert_ids else []
                return Stored(row, pending, alerts)
        raise DedupKeyContended()

    def _group(
        self, fields: dict[str, Any], alert_ids: Sequence[uuid.UUID], now: datetime, attach: Attach | None
    ) -> Grouped | None:
        severity = fields["severity"]
        details = {"title": fields["title"], "severity": severity, "alert_ids": [str(a) for a in alert_ids]}
        row = self.store.group_into(fields["dedup_key"], now=now, alert_ids=alert_ids, details=details,
                                    attach=attach)
        if row is None:
            return None
        if not lifecycle.more_severe(severity, row.severity):
            return Grouped(row, None)
        return Grouped(*self._raise(row, severity, now))

    def _raise(self, row: Row, severity: str, now: datetime) -> tuple[Row, Pending | None]:
        """Raise the incident to `severity`, with its `severity_raised` event and a notification of the
        new severity to its assignee, unless a concurrent request raised it as far already (or it was
        resolved meanwhile): decided with the row locked, so each raise happens once."""
        raised: list[Pending] = []

        def change(locked: Row) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]] | None:
            if locked.status == lifecycle.Status.RESOLVED or not lifecycle.more_severe(severity, locked.severity):
                return None
            timeline = [events.event(locked.id, "severity_raised", at=now,
                                     details={"from": locked.severity, "to": severity})]
            pending, notification = self.outbox.prepare(
                incident_pk=locked.id, incident_id=locked.incident_id, severity=severity,
                engineer=locked.assigned_to or locked.service,
                message=notification_message(**{**locked._mapping, "severity": severity}), now=now,
            )
            raised.append(pending)
            return {"severity": severity, "updated_at": now}, timeline, notification

        row = self.store.raise_severity(row.id, change)
        return row, raised[0] if raised else None

    def announce_grouped(self, grouped: Grouped) -> Row:
        """After a grouping's commit: count it and, when it raised the severity, notify the assignee
        (the service when nobody is assigned) again; nobody is asked who is on call."""
        self.metrics.incident_grouped(grouped.row.severity)
        if grouped.raised is not None:
            self.outbox.deliver(grouped.raised)
        return grouped.row

    def _new_incident(
        self, fields: dict[str, Any], alert_ids: Sequence[uuid.UUID], now: datetime
    ) -> tuple[repo.NewIncident, Pending]:
        values = {**fields, "id": uuid.uuid4(), "incident_id": new_incident_id(), "status": lifecycle.Status.OPEN.value,
                  "notes": [], "created_at": now, "updated_at": now}
        timeline = [events.event(values["id"], "created", at=now, details={
            "title": values["title"], "service": values["service"], "severity": values["severity"],
        })]
        if alert_ids:
            timeline.append(events.event(values["id"], "alerts_linked", at=now,
                                         details={"alert_ids": [str(a) for a in alert_ids]}))
        pending, notification = self.outbox.prepare(
            incident_pk=values["id"], incident_id=values["incident_id"], severity=values["severity"],
            engineer=values["service"], message=notification_message(**values), now=now,
            hold=self.oncall_lookup_bound,
        )
        return repo.NewIncident(values, repo.links(values["id"], alert_ids, now), timeline, notification), pending

    def assign_and_notify(self, stored: Stored) -> Row:
        """After the first commit: ask who is on call, send the notification to them (to the service
        when nobody is), record the assignment and the delivery in one more statement; the incident
        as it then stands. A peer that is down or slow never fails the creation."""
        row = stored.row
        self.metrics.incident_opened(row.severity)
        assignee = self.oncall.current(row.service).primary
        assigned_at = self.clock()
        pending = stored.pending.to(assignee) if assignee is not None else stored.pending
        delivered = self.outbox.send(pending)
        row = self._record_assignment_and_delivery(
            row=row, pending=pending, assignee=assignee, assigned_at=assigned_at, delivered=delivered,
        )
        self.outbox.count(delivered)
        return row

    def _record_assignment_and_delivery(
        self, *, row: Row, pending: Pending, assignee: str | None, assigned_at: datetime, delivered: bool
    ) -> Row:
        """The on-call assignee as of the lookup (unless someone assigned the incident by hand
        meanwhile: theirs stands) and the first delivery attempt as of its reply, in one transaction."""
        try:
            now = self.clock()
            if delivered:
                assigned = self.store.record_first_contact(FirstContact(
                    incident_pk=row.id, assignee=assignee, assigned_at=assigned_at, notification_id=pending.id,
                    attempts=pending.attempts + 1, payload=pending.payload,
                    notified=self.outbox.notified_details(pending), sent_at=now,
                ))
            else:
                assigned = self.store.record_first_contact_failed(
                    incident_pk=row.id, assignee=assignee, assigned_at=assigned_at, notification_id=pending.id,
                    payload=pending.payload,
                    record_failure=lambda conn: self.outbox.record_failure(conn, pending, now=now),
                )
            if assignee is None:
                return row
            return assigned if assigned is not None else self.store.find(row.incident_id)
        except sa.exc.SQLAlchemyError:
            # The incident and its page are committed; the background retries the page as it stands.
            log.warning("could not record the on-call assignee or the delivery", exc_info=True,
                        extra={"assignee": assignee})
            return row
