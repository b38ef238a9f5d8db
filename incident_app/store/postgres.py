"""PostgreSQL's store, with the devices that make the hot paths fast (docs/architecture.md):

- group commit: the creates of the moment in this process share their two statements;
- prepared statements: the incident read and the lists are parsed and planned once per connection;
- pages written as JSON by the database, sent as they are;
- linked alerts enriched from the platform's alerts table when it shares the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine, Row

from incident_app.batching import GroupCommit
from incident_app.documents import AlertsJson, Page
from incident_app.patches import Change
from incident_app.prepared import execute_prepared
from incident_app.repository import analytics as analytics_queries
from incident_app.repository import first_contacts, pages, platform_alerts
from incident_app.repository import incidents as repo
from incident_app.repository.first_contacts import FirstContact
from incident_app.repository.pages import ListFilters
from incident_app.store import Attach, Store
from incident_app.transactions import transaction


class PostgresStore(Store):
    # The window index holds every column the analytics read, at a third of the table's size, but
    # PostgreSQL's default costs prefer reading the whole table when nothing narrows it: 230 ms
    # instead of 110 ms at a million rows. Index paths only, for an analytics transaction.
    ANALYTICS_SETTING = "enable_seqscan = off"
    # Room for the percentiles' sort of a 30-day window in memory (about 245,000 durations each at
    # a million rows, which spilled to disk with the default 4 MB), for at most a quarter of a
    # pool's connections per worker (analytics_cache.computations_for_pool).
    ANALYTICS_WORK_MEM = "work_mem = '16MB'"
    # A time window is a range of that index: its parallel plan's workers cost more CPU than they
    # save once several computations share the cores (6 clients, 30 days: 18.4 against 15.3
    # computations a second, PostgreSQL alone), for 6 ms more alone (docs/performance.md).
    ANALYTICS_WINDOW_SETTING = "max_parallel_workers_per_gather = 0"
    # enable_seqscan = off makes a plan that must scan a table (incident_days with no filter) look
    # costly enough for JIT compilation: ~100 ms of compiling for a statement that runs in ~10.
    ANALYTICS_JIT = "jit = off"

    @classmethod
    def analytics_settings(cls, filters: analytics_queries.AnalyticsFilters) -> list[str]:
        """What an analytics transaction sets for its statements (SET LOCAL)."""
        windowed = filters.since is not None or filters.until is not None
        return [cls.ANALYTICS_SETTING, cls.ANALYTICS_WORK_MEM, cls.ANALYTICS_JIT,
                *([cls.ANALYTICS_WINDOW_SETTING] if windowed else [])]

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # Under load, a create's two statements and their commits were a third of its cost: the
        # creates of the moment in this process share them, one statement and one commit for all.
        self._creations = GroupCommit(self.insert_many)
        self._first_contacts = GroupCommit(self.record_first_contacts)
        # In a storm the groupings of the moment share a statement too: one wait for each incident's
        # row and one commit for many (repository/incidents.group_many).
        self._groupings = GroupCommit(self.group_many)
        self._alert_reads = GroupCommit(self.linked_alerts_json_many)

    # ------------------------------------------------------------------ creates

    def insert_new(self, new: repo.NewIncident) -> Row | None:
        return self._creations.submit(new)

    def insert_many(self, new: list[repo.NewIncident]) -> list[Row | None]:
        """Store new incidents in one statement (the group commit's write)."""
        with self.single_statement() as conn:
            return repo.insert_many(conn, new)

    def _insert(self, conn: Connection, new: repo.NewIncident) -> Row | None:
        (row,) = repo.insert_many(conn, [new])
        return row

    def group_into(
        self, dedup_key: str, *, now: datetime, alert_ids: Sequence[uuid.UUID], details: dict[str, Any],
        attach: Attach | None,
    ) -> Row | None:
        if attach is not None:  # in the transaction of its Idempotency-Key: alone
            return super().group_into(dedup_key, now=now, alert_ids=alert_ids, details=details, attach=attach)
        return self._groupings.submit(repo.Grouping(dedup_key, now, alert_ids, details))

    def group_many(self, groupings: list[repo.Grouping]) -> list[Row | None]:
        """Fold creates into their keys' incidents in one statement (the group commit's write)."""
        with self.single_statement() as conn:
            return repo.group_many(conn, groupings)

    def new_links(self, incident_pk: uuid.UUID, alert_ids: Sequence[uuid.UUID], now: datetime) -> list[dict[str, Any]]:
        # Read back only when the platform's alerts table can add the alerts' own fields.
        with self.reading() as conn:
            if platform_alerts.present(conn):
                return self.linked_alerts(conn, incident_pk)
        return super().new_links(incident_pk, alert_ids, now)

    def record_first_contact(self, contact: FirstContact) -> Row | None:
        return self._first_contacts.submit(contact)

    def record_first_contacts(self, contacts: list[FirstContact]) -> list[Row | None]:
        """Record many first contacts in one statement (the group commit's write)."""
        with self.single_statement() as conn:
            assigned = first_contacts.record_many(conn, contacts)
        return [assigned.get(contact.incident_pk) for contact in contacts]

    # ------------------------------------------------------------------ changes

    def update_if_unchanged(
        self, row: Row, values: dict[str, Any], timeline: Sequence[dict[str, Any]], *, unchanged: Sequence[str],
    ) -> Row | None:
        # A PATCH's write (acknowledge, note …) prepared: parsing and planning its statement of two
        # CTEs on every request was most of what PostgreSQL spent on it (docs/performance.md).
        statement, parameters = repo.change_if_unchanged(row, values, timeline, unchanged=unchanged)
        with self.single_statement() as conn:
            rows = execute_prepared(conn, statement, parameters).all()
        return rows[0] if rows else None

    def acknowledge_open(self, incident_id: str, change: Change) -> tuple[Row, list[dict[str, Any]]] | None:
        # The bench's acknowledge (and the commonest PATCH): the read before the write was a fifth
        # of a worker's time on it, and a statement more for PostgreSQL (docs/performance.md).
        with self.single_statement() as conn:
            def query(enrich: bool) -> tuple[Row, list[dict[str, Any]]] | None:
                statement, parameters = repo.acknowledge_open(
                    incident_id, change.values, change.timeline, was_status=change.transition.from_status,
                    enrich=enrich)
                return repo.incident_and_alerts(execute_prepared(conn, statement, parameters).all())

            # A statement that fails writes nothing, so the one without the platform's fields may follow it.
            return platform_alerts.enriched_if_possible(conn, query)

    # ------------------------------------------------------------------ reads

    def find_with_alerts(
        self, conn: Connection, incident_id: str, *, for_update: bool = False
    ) -> tuple[Row, list[dict[str, Any]]] | None:
        def query(enrich: bool) -> tuple[Row, list[dict[str, Any]]] | None:
            statement = repo.incident_with_alerts(enrich, for_update)
            return repo.incident_and_alerts(execute_prepared(conn, statement, {"incident_id": incident_id}).all())

        return platform_alerts.enriched_if_possible(conn, query)

    def linked_alerts(self, conn: Connection, incident_pk: uuid.UUID) -> list[dict[str, Any]]:
        def query(enrich: bool) -> list[dict[str, Any]]:
            return repo.linked_alerts(conn, [incident_pk], enrich=enrich)[incident_pk]

        return platform_alerts.enriched_if_possible(conn, query)

    def linked_alerts_json(self, incident_pk: uuid.UUID, alert_url: str) -> AlertsJson:
        # Written by PostgreSQL in C: at 330 alerts, reading them into Python and formatting them
        # cost a grouped create 3 ms of worker CPU. The groupings of a batch wake together and
        # ask at once: the reads of the moment share one statement, an incident read once.
        return self._alert_reads.submit((incident_pk, alert_url))

    def linked_alerts_json_many(self, wanted: list[tuple[uuid.UUID, str]]) -> list[AlertsJson]:
        """The alerts' texts of each (incident, url prefix), in one statement per prefix (the
        group commit's read: after every grouping of its callers committed)."""
        found: dict[tuple[uuid.UUID, str], AlertsJson] = {}
        with self.reading() as conn:
            for alert_url in dict.fromkeys(url for _, url in wanted):
                pks = list(dict.fromkeys(pk for pk, url in wanted if url == alert_url))
                for pk, texts in self._alerts_texts(conn, pks, alert_url).items():
                    found[pk, alert_url] = texts
        return [found[item] for item in wanted]

    @staticmethod
    def _alerts_texts(conn: Connection, pks: list[uuid.UUID], alert_url: str) -> dict[uuid.UUID, AlertsJson]:
        parameters = {"incident_pks": pks, "alert_url_json": repo.alert_url_json(alert_url)}

        def query(enrich: bool) -> dict[uuid.UUID, AlertsJson]:
            # The platform's alerts are written by json_build_object, which takes the url as it is.
            given = {**parameters, "alert_url": alert_url} if enrich else parameters
            rows = execute_prepared(conn, repo.linked_alerts_json(enrich), given)
            return {row.incident_pk: AlertsJson(row.alerts, row.alert_ids) for row in rows}

        return platform_alerts.enriched_if_possible(conn, query)

    def analytics(self, filters: analytics_queries.AnalyticsFilters) -> dict[str, Any]:
        with transaction(self.engine) as conn:
            # One snapshot for its two statements: the ranks read from the duration indexes are
            # counted by the grouped pass, and an acknowledge between the two would shift them.
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for setting in self.analytics_settings(filters):
                conn.exec_driver_sql(f"SET LOCAL {setting}")
            return analytics_queries.incident_analytics(conn, filters)

    def page(self, filters: ListFilters, *, limit: int, offset: int) -> Page:
        with self.reading() as conn:
            return Page(self.page_json(conn, filters, limit=limit, offset=offset))

    @staticmethod
    def page_json(conn: Connection, filters: ListFilters, *, limit: int, offset: int) -> str:
        """The page's JSON text as PostgreSQL writes it (repository/pages.page_json), on `conn`."""
        given = filters.given()
        statement = pages.page_json(tuple(given))
        parameters = {**given, "limit": limit, "offset": offset}
        if len(given) > 1:
            # Which index serves two filters best depends on their values (a plan for any values
            # read up to 7 times longer at 1,000,000 rows): planned for the values, every time.
            return conn.execute(statement, parameters).scalar_one()
        return execute_prepared(conn, statement, parameters).scalar_one()
