"""Use cases: one short method each, one transaction each, side effects (metrics, peers) after it
commits. The create's steps around its first commit are a flow of their own (flows.py); every
database difference is the store's (store/)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from incident_app import lifecycle
from incident_app.analytics_cache import AnalyticsCache
from incident_app.documents import AlertsJson, Page, incident_document
from incident_app.errors import IncidentNotFound, NothingToUpdate, WebhookNotFound
from incident_app.flows import Grouped, IncidentOpening
from incident_app.idempotency import IdempotencyKeys, Replay, Reservation, request_fingerprint
from incident_app.metrics import IncidentMetrics
from incident_app.patches import UNSET, Change, Patch
from incident_app.repository import analytics as analytics_queries
from incident_app.repository import events
from incident_app.repository import idempotency as idempotency_queries
from incident_app.repository import incidents as repo
from incident_app.repository import webhooks as webhook_queries
from incident_app.repository.pages import ListFilters
from incident_app.store import Attach, Store
from incident_app.webhooks import new_secret

log = logging.getLogger(__name__)

INCIDENT_ID = re.compile(r"inc-[0-9a-f]{16}")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Update:
    """What a PATCH changed. `transition` is set only for the request that made the status change;
    `note` is the note it appended, as stored."""

    incident: dict[str, Any]
    transition: lifecycle.Transition | None
    note: dict[str, Any] | None = None


@dataclass(frozen=True)
class Created:
    """A creation's answer. `grouped`: folded into the unresolved incident of its dedup_key, none
    opened. `replayed`: an Idempotency-Key retry, answered as the first request was. `alerts`: the
    incident's alerts as JSON texts, when `incident` is the document without them (a grouped create)."""

    incident: dict[str, Any]
    replayed: bool = False
    grouped: bool = False
    alerts: AlertsJson | None = None


# Optimistic writes of a PATCH before it locks the row instead; each lost one means another request
# changed the incident meanwhile.
OPTIMISTIC_ATTEMPTS = 3


class IncidentService:
    def __init__(
        self, *, store: Store, opening: IncidentOpening, idempotency: IdempotencyKeys, metrics: IncidentMetrics,
        alert_service_url: str, clock: Callable[[], datetime] = utcnow, analytics_cache: AnalyticsCache | None = None,
    ) -> None:
        self.store = store
        self.opening = opening
        self.idempotency = idempotency
        self.metrics = metrics
        # Each linked alert points at its page in the Alert Ingestion Service (ALERT_SERVICE_URL).
        self.alert_service_url = alert_service_url
        self.clock = clock
        # Concurrent requests for the same analytics share one computation; by default none is reused.
        self.analytics_cache = analytics_cache or AnalyticsCache(max_age=0)

    # ------------------------------------------------------------------ create

    def create_incident(self, *, idempotency_key: str | None = None, **fields: Any) -> Created:
        """Open an incident: store it (the first commit), then the flow that assigns and notifies
        (flows.IncidentOpening); or, with the `dedup_key` of an unresolved incident, fold it into that
        one. With an Idempotency-Key, a retry replays the first answer."""
        reservation: Reservation | None = None
        if idempotency_key is not None:
            claim = self.idempotency.reserve(idempotency_key, request_fingerprint(fields))
            if isinstance(claim, Replay):
                return Created(self._replayed(claim), replayed=True, grouped=claim.grouped)
            reservation = claim
        try:
            attach = None if reservation is None else self._attacher(reservation)
            stored = self.opening.store_new(attach=attach, **fields)
        except BaseException:
            if reservation is not None:
                self._release_quietly(reservation)
            raise
        grouped = isinstance(stored, Grouped)
        row = self.opening.announce_grouped(stored) if grouped else self.opening.assign_and_notify(stored)
        # Until here a retry with the same key is told the first is still in flight (409).
        if reservation is not None:
            self._complete_quietly(reservation)
        if not isinstance(stored, Grouped):
            return Created(self._document(row, stored.alerts))
        # Read after the grouping's commit, as GET one would read them (and after the key's completion:
        # should the read fail, a retry replays the grouping instead of waiting for the key to go stale).
        alerts = self.store.linked_alerts_json(row.id, self._alert_url(""))
        return Created(incident_document(row), grouped=True, alerts=alerts)

    def _attacher(self, reservation: Reservation) -> Attach:
        return lambda conn, incident_pk, grouped: self.idempotency.attach(conn, reservation, incident_pk, grouped)

    def _replayed(self, replay: Replay) -> dict[str, Any]:
        with self.store.reading() as conn:
            row = idempotency_queries.incident_by_pk(conn, replay.incident_pk)
            return self._document(row, self.store.linked_alerts(conn, row.id))

    def _release_quietly(self, reservation: Reservation) -> None:
        try:
            self.idempotency.release(reservation)
        except sa.exc.SQLAlchemyError:
            log.warning("could not release an idempotency key; it frees itself when stale", exc_info=True)

    def _complete_quietly(self, reservation: Reservation) -> None:
        try:
            self.idempotency.complete(reservation)
        except sa.exc.SQLAlchemyError:
            # The incident is committed: a retry replays it once the reservation goes stale.
            log.warning("could not mark an idempotency key complete", exc_info=True)

    # ------------------------------------------------------------------ read

    def _document(self, row: Row, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        """The incident with its alerts, each linked to the alert in the Alert Ingestion Service."""
        return incident_document(row, [{**alert, "url": self._alert_url(alert["alert_id"])} for alert in alerts])

    def _alert_url(self, alert_id: uuid.UUID | str) -> str:
        return f"{self.alert_service_url}/api/v1/alerts/{alert_id}"

    def _existing(self, conn: Connection, incident_id: str, *, for_update: bool = False) -> tuple[Row, list[dict]]:
        """The incident and its linked alerts in one query, or IncidentNotFound; an id that cannot
        exist is not even looked up."""
        possible = INCIDENT_ID.fullmatch(incident_id) is not None
        found = self.store.find_with_alerts(conn, incident_id, for_update=for_update) if possible else None
        if found is None:
            raise IncidentNotFound(incident_id)
        return found

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        with self.store.reading() as conn:
            return self._document(*self._existing(conn, incident_id))

    def list_incidents(self, filters: ListFilters, *, limit: int, offset: int) -> Page:
        """A page, newest first, with the number of incidents matching the filters."""
        return self.store.page(filters, limit=limit, offset=offset)

    def analytics(self, filters: analytics_queries.AnalyticsFilters) -> dict[str, Any]:
        return self.analytics_cache.answer(filters, lambda: self.store.analytics(filters))

    # ------------------------------------------------------------------ update

    def update_incident(
        self, incident_id: str, *, status: str | None = None, assigned_to: str | None = UNSET,
        note: str | None = None, author: str | None = None,
    ) -> Update:
        """Apply a PATCH atomically; under concurrency each transition is made by exactly one request.

        An acknowledge alone of an open incident is one round trip where the store can (PostgreSQL:
        Store.acknowledge_open); when that changes nothing, or for any other PATCH, optimistic first,
        two round trips: the incident is read without a lock, the change worked out, and one statement
        writes it (with its events) only if what the change was worked out from (the status, assignee
        or notes the request touches) is still as read. A request that lost that race reads again;
        after OPTIMISTIC_ATTEMPTS it locks the row (FOR UPDATE) and cannot lose.
        """
        if status is None and assigned_to is UNSET and note is None:
            raise NothingToUpdate()
        request = Patch(status, assigned_to, note, author)
        if request.acknowledges_only and INCIDENT_ID.fullmatch(incident_id):
            change = request.acknowledged(self.clock())
            acknowledged = self.store.acknowledge_open(incident_id, change)
            if acknowledged is not None:
                return self._updated(*acknowledged, change)
            # Not found, not open, or another request acknowledged it first: the path below says which.
        for _ in range(OPTIMISTIC_ATTEMPTS):
            with self.store.reading() as conn:
                row, alerts = self._existing(conn, incident_id)
            change = request.plan(row, self.clock())
            if not change.values:
                return self._updated(row, alerts, change)
            updated = self.store.update_if_unchanged(row, change.values, change.timeline,
                                                     unchanged=request.depends_on)
            if updated is not None:
                return self._updated(updated, alerts, change)
        with self.store.writing() as conn:
            row, alerts = self._existing(conn, incident_id, for_update=True)
            change = request.plan(row, self.clock())
            if change.values:
                row = repo.write_change(conn, row.id, change.values, change.timeline)
        return self._updated(row, alerts, change)

    def _updated(self, row: Row, alerts: list[dict[str, Any]], change: Change) -> Update:
        """The answer to a PATCH, with the transition's metrics once it is committed."""
        if change.transition is not None:
            seconds = (change.at - row.created_at).total_seconds()
            self.metrics.status_changed(change.transition, row.severity, seconds)
        return Update(self._document(row, alerts), change.transition, change.note)

    def add_note(self, incident_id: str, *, content: str, author: str | None = None) -> dict[str, Any]:
        """Append a note, exactly as a PATCH with `note` and `author` does; the note as stored."""
        return self.update_incident(incident_id, note=content, author=author).note

    # ------------------------------------------------------------------ alerts and timeline

    def link_alerts(self, incident_id: str, alert_ids: Sequence[uuid.UUID]) -> dict[str, Any]:
        """Link more alerts; one already linked is left as it was, so a retry changes nothing."""
        with self.store.writing() as conn:
            row, alerts = self._existing(conn, incident_id, for_update=True)
            linked = {alert["alert_id"] for alert in alerts}
            new = [alert_id for alert_id in dict.fromkeys(alert_ids) if alert_id not in linked]
            if new:
                row = repo.add_links(conn, row.id, new, self.clock())
                alerts = self.store.linked_alerts(conn, row.id)
        return self._document(row, alerts)

    def timeline(self, incident_id: str) -> dict[str, Any]:
        with self.store.reading() as conn:
            row, _ = self._existing(conn, incident_id)
            return {"incident_id": incident_id, "events": events.list_events(conn, row.id)}


# ------------------------------------------------------------------ webhooks


class WebhookService:
    """Subscriptions (contract 7, "Webhooks"); their deliveries are written by the database with
    each event and sent by webhooks.WebhookSender."""

    def __init__(self, *, store: Store, clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.clock = clock

    def subscribe(self, *, url: str, description: str | None = None, types: Sequence[str] | None = None,
                  service: str | None = None, severity: str | None = None) -> dict[str, Any]:
        """A new subscription, with its secret: the one answer that shows it."""
        row = {"id": uuid.uuid4(), "url": url, "description": description,
               "types": None if types is None else list(dict.fromkeys(types)),
               "service": service, "severity": severity, "secret": new_secret(), "created_at": self.clock()}
        with self.store.writing() as conn:
            webhook_queries.insert(conn, row)
        return {**row, "last_delivery_at": None, "last_status": None, "pending": 0}

    def list_webhooks(self) -> list[dict[str, Any]]:
        with self.store.reading() as conn:
            return [row._asdict() for row in webhook_queries.all_with_status(conn)]

    def get_webhook(self, webhook_id: uuid.UUID) -> dict[str, Any]:
        with self.store.reading() as conn:
            row = webhook_queries.find_with_status(conn, webhook_id)
        if row is None:
            raise WebhookNotFound(webhook_id)
        return row._asdict()

    def unsubscribe(self, webhook_id: uuid.UUID) -> None:
        """Delete it, and every delivery still waiting: it receives nothing more."""
        with self.store.single_statement() as conn:
            if not webhook_queries.delete(conn, webhook_id):
                raise WebhookNotFound(webhook_id)
