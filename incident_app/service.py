"""Use cases: each one transaction, side effects (metrics, peers) after it commits."""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from incident_app import lifecycle
from incident_app.analytics_cache import AnalyticsCache
from incident_app.batching import GroupCommit
from incident_app.errors import IncidentNotFound, NothingToUpdate
from incident_app.idempotency import IdempotencyKeys, Replay, Reservation, request_fingerprint
from incident_app.metrics import IncidentMetrics
from incident_app.outbox import NotificationOutbox, Pending
from incident_app.peers.oncall import OnCallClient
from incident_app.repository import analytics as analytics_queries
from incident_app.repository import events, first_contacts
from incident_app.repository import idempotency as idempotency_queries
from incident_app.repository import incidents as repo
from incident_app.repository.first_contacts import FirstContact
from incident_app.statements import execute_together
from incident_app.tables import incidents
from incident_app.transactions import reading, single_statement, transaction

log = logging.getLogger(__name__)

INCIDENT_ID = re.compile(r"inc-[0-9a-f]{16}")
_ID_ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


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


@dataclass(frozen=True)
class Created:
    """A creation's answer. `replayed`: an Idempotency-Key retry, answered with the first incident."""

    incident: dict[str, Any]
    replayed: bool = False


def notification_message(*, severity: str, title: str, service: str, incident_id: str, **_: Any) -> str:
    return f"[{severity.upper()}] {title} ({service}) — {incident_id}"


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return (later - earlier).total_seconds() if later is not None else None


INCIDENT_FIELDS = tuple(incidents.c.keys())


def incident_document(row: Row, alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    mapping = row._mapping
    document = {name: mapping[name] for name in INCIDENT_FIELDS}
    document["mtta_seconds"] = _seconds(row.acknowledged_at, row.created_at)
    document["mttr_seconds"] = _seconds(row.resolved_at, row.created_at)
    if alerts is not None:
        document["alerts"] = alerts
    return document


# Optimistic writes of a PATCH before it locks the row instead; each lost one means another request
# changed the incident meanwhile.
OPTIMISTIC_ATTEMPTS = 3


@dataclass(frozen=True)
class _Change:
    values: dict[str, Any]  # the columns to set; empty when the PATCH changes nothing
    timeline: list[dict[str, Any]]
    transition: lifecycle.Transition | None
    at: datetime


@dataclass(frozen=True)
class _Patch:
    status: str | None
    assigned_to: str | None  # or UNSET
    note: str | None
    author: str | None

    @property
    def depends_on(self) -> tuple[str, ...]:
        """The columns a change is worked out from: it stands only while they are as read."""
        used = {"status": self.status is not None, "assigned_to": self.assigned_to is not UNSET,
                "notes": self.note is not None}
        return tuple(name for name, touched in used.items() if touched)

    def plan(self, row: Row, now: datetime) -> _Change:
        """What this PATCH changes on `row` as of `now` (InvalidTransition if the lifecycle forbids it)."""
        values: dict[str, Any] = {}
        timeline: list[dict[str, Any]] = []
        transition = lifecycle.plan_transition(row.status, self.status) if self.status is not None else None
        if transition is not None:
            values["status"] = transition.to_status
            values["acknowledged_at" if transition.acknowledges else "resolved_at"] = now
            timeline.append(events.event(row.id, transition.to_status, at=now, actor=self.author,
                                         details={"from": transition.from_status}))
        if self.assigned_to is not UNSET and self.assigned_to != row.assigned_to:
            values["assigned_to"] = self.assigned_to
            timeline.append(events.event(row.id, "reassigned", at=now, actor=self.author,
                                         details={"from": row.assigned_to, "to": self.assigned_to}))
        if self.note is not None:
            values["notes"] = [*row.notes, lifecycle.note_entry(self.note, self.author, now)]
            timeline.append(events.event(row.id, "note_added", at=now, actor=self.author,
                                         details={"text": self.note}))
        if values:
            values["updated_at"] = now
        return _Change(values, timeline, transition, now)


class IncidentService:
    def __init__(
        self,
        *,
        engine: Engine,
        oncall: OnCallClient,
        outbox: NotificationOutbox,
        idempotency: IdempotencyKeys,
        metrics: IncidentMetrics,
        oncall_lookup_bound: timedelta = timedelta(seconds=10),
        alert_service_url: str = "http://alert-ingestion:8001",
        clock: Callable[[], datetime] = utcnow,
        analytics_cache: AnalyticsCache | None = None,
    ) -> None:
        self.engine = engine
        self.oncall = oncall
        # How long a new incident's notification waits for the on-call lookup before the
        # background may send it unassigned (only if this process died in between).
        self.oncall_lookup_bound = oncall_lookup_bound
        # Each linked alert points at its page in the Alert Ingestion Service (ALERT_SERVICE_URL).
        self.alert_service_url = alert_service_url
        self.outbox = outbox
        self.idempotency = idempotency
        self.metrics = metrics
        self.clock = clock
        # Concurrent requests for the same analytics share one computation; by default none is reused.
        self.analytics_cache = analytics_cache or AnalyticsCache(max_age=0)
        # PostgreSQL: the creates of the moment in this process share their statements (group commit).
        postgres = engine.dialect.name == "postgresql"
        self._creations = GroupCommit(self._insert_new_incidents) if postgres else None
        self._first_contacts = GroupCommit(self._record_first_contacts) if postgres else None

    # ------------------------------------------------------------------ create

    def create_incident(self, *, idempotency_key: str | None = None, **fields: Any) -> Created:
        """Open an incident in the contract's order: store it, ask who is on call, assign, notify.

        The first statement stores the incident, its timeline and its notification (addressed to the
        service, held for the length of the lookup), so a crash at any point loses neither the
        incident nor the page. The notification then goes to the assignee, and one more statement
        records the assignment and the delivery.
        """
        reservation: Reservation | None = None
        if idempotency_key is not None:
            claim = self.idempotency.reserve(idempotency_key, request_fingerprint(fields))
            if isinstance(claim, Replay):
                return Created(self._replayed(claim), replayed=True)
            reservation = claim
        try:
            row, pending, alerts = self._insert_with_fresh_id(reservation=reservation, **fields)
        except BaseException:
            if reservation is not None:
                self._release_quietly(reservation)
            raise
        self.metrics.incident_opened(row.severity)
        assignee = self.oncall.current(row.service).primary
        assigned_at = self.clock()
        if assignee is not None:
            pending = pending.to(assignee)
        delivered = self.outbox.send(pending)
        row = self._record_assignment_and_delivery(row, pending, assignee, assigned_at, delivered)
        self.outbox.count(delivered)
        # Until here a retry with the same key is told the first is still in flight (409).
        if reservation is not None:
            try:
                self.idempotency.complete(reservation)
            except sa.exc.SQLAlchemyError:
                # The incident is committed: a retry replays it once the reservation goes stale.
                log.warning("could not mark an idempotency key complete", exc_info=True)
        return Created(self._document(row, alerts))

    def _record_assignment_and_delivery(
        self, row: Row, pending: Pending, assignee: str | None, assigned_at: datetime, delivered: bool
    ) -> Row:
        """The on-call assignee as of the lookup (unless someone assigned the incident by hand
        meanwhile: theirs stands) and the first delivery attempt as of its reply, in one transaction.

        On PostgreSQL, a delivered one is recorded with those of the other creates of the moment in
        this process, one statement and one commit for all (group commit): under load, that
        statement's round trip and commit were a third of a create's cost.
        """
        try:
            now = self.clock()
            if delivered and self._first_contacts is not None:
                assigned = self._first_contacts.submit(FirstContact(
                    row.id, assignee, assigned_at, pending.id, pending.attempts + 1, pending.payload,
                    self.outbox.notified_details(pending), now,
                ))
                if assignee is None:
                    return row
            elif delivered:
                writes = self.outbox.sent(pending, now=now)
                with single_statement(self.engine) as conn:
                    if assignee is None:
                        execute_together(conn, *writes)
                        return row
                    assigned = repo.assign_if_unassigned(conn, row.id, assignee, assigned_at, together=writes)
            else:
                with transaction(self.engine, write=True) as conn:
                    if assignee is None:
                        self.outbox.record_failure(conn, pending, now=now)
                        return row
                    assigned = repo.assign_if_unassigned(conn, row.id, assignee, assigned_at)
                    self.outbox.readdress(conn, pending, engineer=assignee)
                    self.outbox.record_failure(conn, pending, now=now)
            if assigned is not None:
                return assigned
            with reading(self.engine) as conn:
                return repo.find_incident(conn, row.incident_id)
        except sa.exc.SQLAlchemyError:
            # The incident and its page are committed; the background retries the page as it stands.
            log.warning("could not record the on-call assignee or the delivery", exc_info=True,
                        extra={"assignee": assignee})
            return row

    def _insert_new_incidents(self, new: list[repo.NewIncident]) -> list[Row]:
        with single_statement(self.engine) as conn:
            return repo.insert_new_incidents(conn, new)

    def _record_first_contacts(self, contacts: list[FirstContact]) -> list[Row | None]:
        with single_statement(self.engine) as conn:
            assigned = first_contacts.record(conn, contacts)
        return [assigned.get(contact.incident_pk) for contact in contacts]

    def _replayed(self, replay: Replay) -> dict[str, Any]:
        with reading(self.engine) as conn:
            row = idempotency_queries.incident_by_pk(conn, replay.incident_pk)
            alerts = repo.linked_alerts(conn, [row.id])[row.id]
        return self._document(row, alerts)

    def _release_quietly(self, reservation: Reservation) -> None:
        try:
            self.idempotency.release(reservation)
        except sa.exc.SQLAlchemyError:
            log.warning("could not release an idempotency key; it frees itself when stale", exc_info=True)

    def _insert_with_fresh_id(
        self, *, alert_ids: Sequence[uuid.UUID] = (), reservation: Reservation | None, **fields: Any
    ) -> tuple[Row, Pending, list[dict[str, Any]]]:
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
            new = repo.NewIncident(values, repo.links(values["id"], alert_ids, now), timeline, notification)
            try:
                if reservation is None and self._creations is not None:
                    row = self._creations.submit(new)
                elif reservation is None:
                    with single_statement(self.engine) as conn:
                        (row,) = repo.insert_new_incidents(conn, [new])
                else:
                    with transaction(self.engine, write=True) as conn:
                        (row,) = repo.insert_new_incidents(conn, [new])
                        self.idempotency.attach(conn, reservation, row.id)
            except sa.exc.IntegrityError:
                # 64 random bits: a collision is rare, and is met with a new id, never a 500. (In a
                # group commit, every create of the statement tries again, each with a new id.)
                if attempt == _ID_ATTEMPTS:
                    raise
                log.warning("incident id collision, retrying", extra={"attempt": attempt})
                continue
            alerts = []
            if alert_ids:
                with reading(self.engine) as conn:
                    alerts = repo.new_links(conn, row.id, alert_ids, now)
            return row, pending, alerts
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ read

    def _document(self, row: Row, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        """The incident with its alerts, each linked to the alert in the Alert Ingestion Service."""
        base = f"{self.alert_service_url}/api/v1/alerts"
        return incident_document(row, [{**alert, "url": f"{base}/{alert['alert_id']}"} for alert in alerts])

    @staticmethod
    def _existing(conn: Connection, incident_id: str, *, for_update: bool = False) -> tuple[Row, list[dict[str, Any]]]:
        """The incident and its linked alerts in one query, or IncidentNotFound; an id that cannot
        exist is not even looked up."""
        possible = INCIDENT_ID.fullmatch(incident_id) is not None
        found = repo.find_incident_with_alerts(conn, incident_id, for_update=for_update) if possible else None
        if found is None:
            raise IncidentNotFound(incident_id)
        return found

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        with reading(self.engine) as conn:
            return self._document(*self._existing(conn, incident_id))

    def list_incidents(self, filters: repo.ListFilters, *, limit: int, offset: int) -> dict[str, Any] | str:
        """A page, newest first, with the number of incidents matching the filters. On PostgreSQL the
        database writes the page's JSON itself (repository.list_page_json), returned as that text."""
        with reading(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                return repo.list_page_json(conn, filters, limit=limit, offset=offset)
            return self.list_document(conn, filters, limit=limit, offset=offset)

    @staticmethod
    def list_document(conn: Connection, filters: repo.ListFilters, *, limit: int, offset: int) -> dict[str, Any]:
        rows, total = repo.list_incidents(conn, filters, limit=limit, offset=offset)
        return {"incidents": [incident_document(r) for r in rows], "total": total, "limit": limit, "offset": offset}

    def analytics(self, filters: analytics_queries.AnalyticsFilters) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            with reading(self.engine) as conn:
                return analytics_queries.incident_analytics(conn, filters)

        return self.analytics_cache.answer(filters, compute)

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
        """Apply a PATCH atomically; under concurrency each transition is made by exactly one request.

        Optimistic first, two round trips: the incident is read without a lock, the change worked out,
        and one statement writes it (with its events) only if what the change was worked out from
        (the status, assignee or notes the request touches) is still as read. A request that lost that
        race reads again; after OPTIMISTIC_ATTEMPTS it locks the row (FOR UPDATE) and cannot lose.
        """
        if status is None and assigned_to is UNSET and note is None:
            raise NothingToUpdate()
        request = _Patch(status, assigned_to, note, author)
        for _ in range(OPTIMISTIC_ATTEMPTS):
            with reading(self.engine) as conn:
                row, alerts = self._existing(conn, incident_id)
            change = request.plan(row, self.clock())
            if not change.values:
                return self._updated(row, alerts, change)
            with single_statement(self.engine) as conn:
                updated = repo.update_if_unchanged(conn, row, change.values, change.timeline,
                                                   unchanged=request.depends_on)
            if updated is not None:
                return self._updated(updated, alerts, change)
        with transaction(self.engine, write=True) as conn:
            row, alerts = self._existing(conn, incident_id, for_update=True)
            change = request.plan(row, self.clock())
            if change.values:
                update = repo.update_incident(row.id, change.values)
                (row,) = execute_together(conn, update, events.insert_events(*change.timeline,
                                                                             dialect=conn.dialect.name))
        return self._updated(row, alerts, change)

    def _updated(self, row: Row, alerts: list[dict[str, Any]], change: _Change) -> Update:
        """The answer to a PATCH, with the transition's metrics once it is committed."""
        if change.transition is not None:
            seconds = (change.at - row.created_at).total_seconds()
            self.metrics.status_changed(change.transition, row.severity, seconds)
        return Update(self._document(row, alerts), change.transition)

    # ------------------------------------------------------------------ alerts and timeline

    def link_alerts(self, incident_id: str, alert_ids: Sequence[uuid.UUID]) -> dict[str, Any]:
        """Link more alerts; one already linked is left as it was, so a retry changes nothing."""
        with transaction(self.engine, write=True) as conn:
            row, alerts = self._existing(conn, incident_id, for_update=True)
            linked = {alert["alert_id"] for alert in alerts}
            new = [alert_id for alert_id in dict.fromkeys(alert_ids) if alert_id not in linked]
            if new:
                now = self.clock()
                repo.link_alerts(conn, row.id, new, now)
                events.record_event(conn, row.id, "alerts_linked", at=now, details={"alert_ids": [str(a) for a in new]})
                row = repo.update_incident(row.id, {"updated_at": now}).execute(conn).one()
                alerts = repo.linked_alerts(conn, [row.id])[row.id]
        return self._document(row, alerts)

    def timeline(self, incident_id: str) -> dict[str, Any]:
        with reading(self.engine) as conn:
            row, _ = self._existing(conn, incident_id)
            return {"incident_id": incident_id, "events": events.list_events(conn, row.id)}
