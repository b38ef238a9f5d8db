"""The seam between the use cases and their database: one store per database, chosen once in
create_app (`open_store`). The use cases call the same operations whichever store runs them;
PostgresStore keeps PostgreSQL's performance devices (group commit, prepared statements, pages
written as JSON by the database, the platform's alert fields), SqliteStore does the same plainly."""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine, Row

from incident_app.documents import AlertsJson, Page
from incident_app.patches import Change
from incident_app.repository import analytics as analytics_queries
from incident_app.repository import first_contacts
from incident_app.repository import incidents as repo
from incident_app.repository import outbox as outbox_queue
from incident_app.repository.first_contacts import FirstContact
from incident_app.repository.pages import ListFilters
from incident_app.transactions import reading, single_statement, transaction

__all__ = ["Attach", "FirstContact", "Store", "open_store"]

# Names the incident a create stored or was grouped into (True) in an Idempotency-Key, in its transaction.
Attach = Callable[[Connection, uuid.UUID, bool], None]


class Store(abc.ABC):
    """What the two stores share; each overrides what its database does its own way."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ connections

    def reading(self) -> AbstractContextManager[Connection]:
        """For reads: each statement sees the latest commit (transactions.reading)."""
        return reading(self.engine)

    def writing(self) -> AbstractContextManager[Connection]:
        """A write transaction, committed when the block ends (transactions.transaction)."""
        return transaction(self.engine, write=True)

    def single_statement(self) -> AbstractContextManager[Connection]:
        """For a block that writes with one statement (transactions.single_statement)."""
        return single_statement(self.engine)

    # ------------------------------------------------------------------ creates

    def insert_new(self, new: repo.NewIncident) -> Row | None:
        """Store a new incident with its links, timeline and notification: its first commit. None
        (nothing stored) when an unresolved incident has its `dedup_key` already."""
        with self.single_statement() as conn:
            return self._insert(conn, new)

    def insert_new_reserved(self, new: repo.NewIncident, *, attach: Attach) -> Row | None:
        """As `insert_new`, with `attach` (an Idempotency-Key naming it) in the same transaction."""
        with self.writing() as conn:
            row = self._insert(conn, new)
            if row is not None:
                attach(conn, row.id, False)
            return row

    def _insert(self, conn: Connection, new: repo.NewIncident) -> Row | None:
        return repo.insert_one(conn, new)

    def group_into(
        self, dedup_key: str, *, now: datetime, alert_ids: Sequence[uuid.UUID], details: dict[str, Any],
        attach: Attach | None,
    ) -> Row | None:
        """Fold a create into the unresolved incident with `dedup_key` (repository.incidents.group_into),
        with `attach` (an Idempotency-Key) in its transaction when given. The incident, or None
        (nothing written) when no unresolved incident has the key."""
        grouping = repo.Grouping(dedup_key, now, alert_ids, details)
        with self.writing() if attach is not None else self.single_statement() as conn:
            row = repo.group_into(conn, grouping)
            if row is not None and attach is not None:
                attach(conn, row.id, True)
            return row

    def raise_severity(
        self, incident_pk: uuid.UUID, change: Callable[[Row], tuple[dict[str, Any], list[dict[str, Any]],
                                                                      dict[str, Any]] | None],
    ) -> Row:
        """Decide with the incident's row locked whether to raise its severity: `change` gives the values,
        events and outbox row of the raise, or None; written in the same transaction. The incident."""
        with self.writing() as conn:
            row = repo.locked(conn, incident_pk)
            raised = change(row)
            if raised is None:
                return row
            values, timeline, notification = raised
            return repo.write_change(conn, row.id, values, timeline, outbox_queue.enqueue(notification))

    def new_links(self, incident_pk: uuid.UUID, alert_ids: Sequence[uuid.UUID], now: datetime) -> list[dict[str, Any]]:
        """The links a create just made, as `linked_alerts` would read them (same time, so by alert id)."""
        return [{"alert_id": alert_id, "linked_at": now} for alert_id in sorted(alert_ids)]

    def record_first_contact(self, contact: FirstContact) -> Row | None:
        """A new incident's assignee (unless someone assigned it meanwhile) and its delivered
        notification, in one transaction: the incident if this assigned it, else None."""
        with self.single_statement() as conn:
            return first_contacts.record_one(conn, contact)

    def record_first_contact_failed(
        self, *, incident_pk: uuid.UUID, assignee: str | None, assigned_at: datetime, notification_id: uuid.UUID,
        payload: dict[str, Any], record_failure: Callable[[Connection], None],
    ) -> Row | None:
        """As `record_first_contact` when the notification was not delivered: the notification is
        readdressed to the assignee and `record_failure` reschedules it, in the same transaction."""
        with self.writing() as conn:
            assigned = None
            if assignee is not None:
                assigned = repo.assign_if_unassigned(conn, incident_pk, assignee, assigned_at)
                outbox_queue.replace_payload(conn, notification_id, payload)
            record_failure(conn)
            return assigned

    # ------------------------------------------------------------------ changes

    def update_if_unchanged(
        self, row: Row, values: dict[str, Any], timeline: Sequence[dict[str, Any]], *, unchanged: Sequence[str],
    ) -> Row | None:
        """Write a change and its events to the incident read as `row`, in one statement, only if its
        `unchanged` columns still hold what `row` holds (repository.incidents.update_if_unchanged)."""
        with self.single_statement() as conn:
            return repo.update_if_unchanged(conn, row, values, timeline, unchanged=unchanged)

    def acknowledge_open(self, incident_id: str, change: Change) -> tuple[Row, list[dict[str, Any]]] | None:
        """Write `change` (Patch.acknowledged) with its events if the incident is still open, in one
        statement: the incident and its linked alerts; None when that changed nothing, or the
        database has no such statement (SQLite: the use case reads, then writes)."""
        return None

    # ------------------------------------------------------------------ reads

    def find(self, incident_id: str) -> Row | None:
        with self.reading() as conn:
            return repo.find_incident(conn, incident_id)

    def find_with_alerts(
        self, conn: Connection, incident_id: str, *, for_update: bool = False
    ) -> tuple[Row, list[dict[str, Any]]] | None:
        """An incident and its linked alerts in one statement, or None."""
        statement = repo.incident_with_alerts(False, for_update)
        return repo.incident_and_alerts(conn.execute(statement, {"incident_id": incident_id}).all())

    def linked_alerts(self, conn: Connection, incident_pk: uuid.UUID) -> list[dict[str, Any]]:
        return repo.linked_alerts(conn, [incident_pk])[incident_pk]

    def linked_alerts_json(self, incident_pk: uuid.UUID, alert_url: str) -> AlertsJson:
        """The incident's linked alerts as its document's JSON texts, each alert's url `alert_url`
        followed by its id: the alerts of a grouped create's answer, as GET one reads them."""
        with self.reading() as conn:
            alerts = self.linked_alerts(conn, incident_pk)
        return AlertsJson.of([{**alert, "url": f"{alert_url}{alert['alert_id']}"} for alert in alerts])

    def analytics(self, filters: analytics_queries.AnalyticsFilters) -> dict[str, Any]:
        """The aggregates of the incidents matching `filters` (repository/analytics)."""
        with self.reading() as conn:
            return analytics_queries.incident_analytics(conn, filters)

    @abc.abstractmethod
    def page(self, filters: ListFilters, *, limit: int, offset: int) -> Page:
        """A page of incidents, newest first, with the number matching the filters: one kind of
        value whichever store writes it."""


def open_store(engine: Engine) -> Store:
    """The store of the engine's database."""
    if engine.dialect.name == "postgresql":
        from incident_app.store.postgres import PostgresStore

        return PostgresStore(engine)
    from incident_app.store.sqlite import SqliteStore

    return SqliteStore(engine)

