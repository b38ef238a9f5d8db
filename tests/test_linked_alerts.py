"""Linked alerts on an incident: given at creation or linked later (POST …/alerts, where linking one
twice is a no-op), oldest first with linked_at, duplicates collapsed, and enriched from the
platform's `alerts.alerts` table when the database holds it (never required)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from incident_app.repository.platform_alerts import forget_table as forget_platform_alerts_table
from incident_app.tables import incident_alerts
from tests.support.platform_alerts import add_platform_alert, create_platform_table, platform_table

URL = "/api/v1/incidents"
T0 = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
A1, A2, A3 = (uuid.UUID(f"00000000-0000-4000-8000-00000000000{n}") for n in (1, 2, 3))
postgresql_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def create(create_incident, clock):
    """An incident created at `when` (T0 unless given) with these alerts linked."""

    def make(alert_ids: list, when: datetime = T0) -> dict:
        clock.set(when)
        return create_incident(title="Checkout latency", service="checkout", alert_ids=[str(a) for a in alert_ids])

    return make


def alert_url(alert_id: uuid.UUID) -> str:
    return f"http://alert-ingestion:8001/api/v1/alerts/{alert_id}"  # the ALERT_SERVICE_URL default


def read(client, incident_id: str) -> dict:
    response = client.get(f"{URL}/{incident_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def link_directly(app, incident: dict, alert_id: uuid.UUID, linked_at: datetime) -> None:
    with app.extensions["engine"].begin() as conn:
        conn.execute(incident_alerts.insert().values(
            incident_id=uuid.UUID(incident["id"]), alert_id=alert_id, linked_at=linked_at,
        ))


@pytest.fixture
def platform_alerts(database_url) -> Iterator[sa.Connection]:
    """The Alert Ingestion Service's table, in the same PostgreSQL database, for one test."""
    with platform_table(database_url) as conn:
        yield conn


@pytest.fixture(autouse=True)
def _fresh_lookup() -> Iterator[None]:
    # Each test decides whether the platform's table exists: no answer cached from another test.
    forget_platform_alerts_table()
    yield
    forget_platform_alerts_table()


# --------------------------------------------------------------------------- both backends


def test_create_and_read_show_the_links_with_linked_at(client, app, create):
    created = create([A2, A1])
    expected = sorted(
        [{"alert_id": str(a), "linked_at": "2026-11-26T10:00:00.123456+00:00", "url": alert_url(a)} for a in (A1, A2)],
        key=lambda e: e["alert_id"],
    )
    assert sorted(created["alerts"], key=lambda e: e["alert_id"]) == expected
    assert sorted(read(client, created["incident_id"])["alerts"], key=lambda e: e["alert_id"]) == expected


def test_duplicate_alert_ids_are_collapsed(client, app, create):
    created = create([A1, A2, A1, A1, A2])
    alerts = read(client, created["incident_id"])["alerts"]
    assert sorted(a["alert_id"] for a in alerts) == [str(A1), str(A2)]


def test_links_are_listed_oldest_first(client, app, create):
    created = create([A2])
    link_directly(app, created, A3, T0 + timedelta(hours=1))
    link_directly(app, created, A1, T0 - timedelta(hours=1))
    alerts = read(client, created["incident_id"])["alerts"]
    assert [(a["alert_id"], a["linked_at"]) for a in alerts] == [
        (str(A1), "2026-11-26T09:00:00.123456+00:00"),
        (str(A2), "2026-11-26T10:00:00.123456+00:00"),
        (str(A3), "2026-11-26T11:00:00.123456+00:00"),
    ]


def test_incident_without_alerts_has_an_empty_list(client, app, create):
    created = create([])
    assert created["alerts"] == [] and created["alert_ids"] == []
    assert read(client, created["incident_id"])["alerts"] == []
    assert read(client, created["incident_id"])["alert_ids"] == []


def test_every_full_incident_carries_alert_ids_in_the_order_of_alerts(client, app, create, clock):
    """The platform's web UI reads `alert_ids`: on create, read, PATCH and link answers; not on lists."""
    created = create([A2])
    assert created["alert_ids"] == [str(A2)]
    link_directly(app, created, A1, T0 - timedelta(hours=1))
    clock.set(T0 + timedelta(hours=1))
    url = f"{URL}/{created['incident_id']}"
    answers = {
        "link": client.post(f"{url}/alerts", json={"alert_ids": [str(A3)]}),
        "read": client.get(url),
        "patch": client.patch(url, json={"status": "acknowledged"}),
    }
    for name, response in answers.items():
        assert response.status_code == 200, name
        incident = response.get_json()
        assert incident["alert_ids"] == [str(A1), str(A2), str(A3)], name
        assert incident["alert_ids"] == [a["alert_id"] for a in incident["alerts"]], name
    [item] = client.get(URL).get_json()["incidents"]
    assert "alert_ids" not in item and "alerts" not in item


def test_without_the_platform_table_entries_carry_only_the_link(client, app, create):
    created = create([A1])
    [entry] = read(client, created["incident_id"])["alerts"]
    assert set(entry) == {"alert_id", "linked_at", "url"}


def test_links_belong_to_their_own_incident(client, app, create):
    first = create([A1])
    second = create([A1, A2])
    assert [a["alert_id"] for a in read(client, first["incident_id"])["alerts"]] == [str(A1)]
    assert len(read(client, second["incident_id"])["alerts"]) == 2


# --------------------------------------------------------------------------- the platform's alerts table


@postgresql_only
def test_platform_table_adds_service_severity_message_and_timestamp(client, app, platform_alerts, create):
    add_platform_alert(platform_alerts, A1, "p99 latency 2.3 s", T0 - timedelta(seconds=90))
    add_platform_alert(platform_alerts, A2, None, T0 - timedelta(seconds=30, microseconds=7))
    created = create([A1, A2, A3])  # A3 is not in the platform's table
    for alerts in (created["alerts"], read(client, created["incident_id"])["alerts"]):
        by_id = {a["alert_id"]: a for a in alerts}
        linked_at = "2026-11-26T10:00:00.123456+00:00"
        assert by_id[str(A1)] == {
            "alert_id": str(A1), "linked_at": linked_at, "service": "checkout", "severity": "warning",
            "message": "p99 latency 2.3 s", "timestamp": "2026-11-26T09:58:30.123456+00:00", "url": alert_url(A1),
        }
        assert by_id[str(A2)]["message"] is None
        assert by_id[str(A2)]["timestamp"] == "2026-11-26T09:59:30.123449+00:00"
        # An alert the platform does not know keeps its link and nothing made up.
        assert by_id[str(A3)] == {"alert_id": str(A3), "linked_at": linked_at, "url": alert_url(A3)}
    # An acknowledge answers with the alerts as GET one reads them (PostgreSQL: in its one statement).
    acknowledged = client.patch(f"{URL}/{created['incident_id']}", json={"status": "acknowledged"}).get_json()
    assert acknowledged["alerts"] == read(client, created["incident_id"])["alerts"] == created["alerts"]


@postgresql_only
def test_platform_table_created_later_is_used_once_the_lookup_is_refreshed(client, app, database_url, create):
    created = create([A1])
    assert set(read(client, created["incident_id"])["alerts"][0]) == {"alert_id", "linked_at", "url"}
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            create_platform_table(conn)
            add_platform_alert(conn, A1, "disk full", T0)
            forget_platform_alerts_table()
            assert read(client, created["incident_id"])["alerts"][0]["message"] == "disk full"
            conn.exec_driver_sql("DROP SCHEMA alerts CASCADE")
    finally:
        engine.dispose()


@postgresql_only
def test_platform_table_dropped_while_remembered_still_answers(client, app, database_url, create):
    """The lookup is cached; a table dropped meanwhile must not turn reads into errors."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            create_platform_table(conn)
            add_platform_alert(conn, A1, "disk full", T0)
            created = create([A1])
            assert created["alerts"][0]["message"] == "disk full"
            conn.exec_driver_sql("DROP SCHEMA alerts CASCADE")
    finally:
        engine.dispose()
    [entry] = read(client, created["incident_id"])["alerts"]
    assert entry == {"alert_id": str(A1), "linked_at": "2026-11-26T10:00:00.123456+00:00", "url": alert_url(A1)}
    # PATCH reads the links inside its write transaction: it must commit all the same.
    response = client.patch(f"{URL}/{created['incident_id']}", json={"status": "acknowledged"})
    assert response.status_code == 200, response.get_json()
    assert read(client, created["incident_id"])["status"] == "acknowledged"


@postgresql_only
def test_platform_table_missing_a_column_is_not_used(client, app, database_url, create):
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE SCHEMA alerts")
            conn.exec_driver_sql("CREATE TABLE alerts.alerts (id UUID PRIMARY KEY, service TEXT)")
            conn.execute(sa.text("INSERT INTO alerts.alerts VALUES (:id, 'checkout')"), {"id": A1})
            forget_platform_alerts_table()
            created = create([A1])
            conn.exec_driver_sql("DROP SCHEMA alerts CASCADE")
    finally:
        engine.dispose()
    assert set(created["alerts"][0]) == {"alert_id", "linked_at", "url"}


# --------------------------------------------------------------------------- linked later


def link(client, incident_id, alert_ids):
    return client.post(f"/api/v1/incidents/{incident_id}/alerts", json={"alert_ids": alert_ids})


def test_linking_adds_alerts_oldest_first(client, create_incident):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    incident = create_incident(alert_ids=[first])
    response = link(client, incident["incident_id"], [second])
    assert response.status_code == 200
    assert [a["alert_id"] for a in response.get_json()["alerts"]] == [first, second]
    stored = client.get(f"/api/v1/incidents/{incident['incident_id']}").get_json()
    assert [a["alert_id"] for a in stored["alerts"]] == [first, second]


def test_linking_twice_is_a_no_op(client, create_incident):
    alert = str(uuid.uuid4())
    incident_id = create_incident()["incident_id"]
    once = link(client, incident_id, [alert]).get_json()
    twice = link(client, incident_id, [alert, alert]).get_json()
    assert twice["alerts"] == once["alerts"]
    assert twice["updated_at"] == once["updated_at"]
    events = client.get(f"/api/v1/incidents/{incident_id}/events").get_json()["events"]
    assert [e["type"] for e in events].count("alerts_linked") == 1


def test_only_new_alerts_are_recorded_on_the_timeline(client, create_incident):
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    incident_id = create_incident(alert_ids=[old])["incident_id"]
    link(client, incident_id, [old, new])
    events = client.get(f"/api/v1/incidents/{incident_id}/events").get_json()["events"]
    assert [e["details"]["alert_ids"] for e in events if e["type"] == "alerts_linked"] == [[old], [new]]


def test_bad_bodies_are_422_naming_the_field(client, create_incident):
    incident_id = create_incident()["incident_id"]
    url = f"/api/v1/incidents/{incident_id}/alerts"
    for body in ({}, {"alert_ids": []}, {"alert_ids": ["not-a-uuid"]}, {"alert_ids": "x"},
                 {"alert_ids": [str(uuid.uuid4()) for _ in range(101)]},
                 {"alert_ids": [str(uuid.uuid4())], "extra": 1}):
        response = client.post(url, json=body)
        assert response.status_code == 422, body
        assert set(response.get_json()["errors"]) <= {"alert_ids", "extra"}
