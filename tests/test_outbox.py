"""No lost notification: written with the incident, sent right away, retried with backoff from
background work until delivered or 24 hours old; every attempt counted; a stable id for dedup."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest

from incident_app import migrate
from incident_app.outbox import retry_wait
from incident_app.settings import Settings
from tests.support.peers import closed_port_url
from tests.support.reliability import rows, wait_until

NOTIFY = "/api/v1/notify"


def outbox(url):
    return rows(url, "SELECT id, state, attempts, payload, next_attempt_at FROM incidents.notification_outbox")


def sent(app, status):
    labels = {"channel": "mock", "status": status}
    return app.extensions["metrics"].registry.get_sample_value("oncall_notifications_sent_total", labels) or 0.0


def later(app, seconds):
    return app.extensions["incident_service"].clock() + timedelta(seconds=seconds)


def test_retry_waits_start_at_five_seconds_and_double_up_to_five_minutes():
    waits = [retry_wait(n).total_seconds() for n in range(1, 10)]
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300, 300]


def test_notification_is_written_in_the_outbox_and_marked_sent(notifier, database_url, create_incident):
    incident = create_incident()
    (request,) = notifier.requests_to(NOTIFY)
    (row,) = outbox(database_url)
    assert row.state == "sent" and row.attempts == 1
    assert uuid.UUID(request.body["notification_id"]) == uuid.UUID(str(row.id))
    assert request.body["incident_id"] == incident["incident_id"]
    assert set(request.body) == {"incident_id", "engineer", "channel", "message", "severity", "notification_id"}


def test_refused_notification_stays_pending_and_is_retried_with_the_same_id(
    app, notifier, database_url, create_incident
):
    notifier.respond(503, {"error": "down"})
    create_incident()
    (first,) = notifier.requests_to(NOTIFY)
    (row,) = outbox(database_url)
    assert (row.state, row.attempts) == ("pending", 1)

    outbox_work = app.extensions["background"].outbox
    assert outbox_work.deliver_due(now=later(app, 1)) == 0, "not due before its first retry"
    notifier.respond(200, {"status": "sent"})
    assert outbox_work.deliver_due(now=later(app, 6)) == 1, "the first retry comes within 10 seconds"

    first_retry = notifier.requests_to(NOTIFY)[1]
    assert first_retry.body == first.body  # same notification_id: the receiver can drop duplicates
    (row,) = outbox(database_url)
    assert (row.state, row.attempts) == ("sent", 2)
    assert outbox_work.deliver_due(now=later(app, 3600)) == 0, "a delivered notification is never sent again"


def test_every_attempt_counts_in_the_metric(app, notifier, create_incident):
    notifier.respond(500, {})
    before_failed, before_sent = sent(app, "failed"), sent(app, "sent")
    create_incident()
    outbox_work = app.extensions["background"].outbox
    outbox_work.deliver_due(now=later(app, 6))  # 2nd attempt fails, next wait 10 s
    notifier.respond(200, {})
    assert outbox_work.deliver_due(now=later(app, 6 + 11)) == 1
    assert sent(app, "failed") == before_failed + 2
    assert sent(app, "sent") == before_sent + 1


def test_backoff_doubles_between_attempts(app, notifier, database_url, create_incident):
    notifier.respond(503, {})
    create_incident()
    outbox_work = app.extensions["background"].outbox
    start = app.extensions["incident_service"].clock()
    elapsed = 0
    for failures in range(1, 6):
        elapsed += retry_wait(failures).total_seconds() + 0.5
        assert outbox_work.deliver_due(now=start + timedelta(seconds=elapsed - 1.0)) == 0
        assert outbox_work.deliver_due(now=start + timedelta(seconds=elapsed)) == 1
    (row,) = outbox(database_url)
    assert row.attempts == 6 and row.state == "pending"


def test_gives_up_after_24_hours_and_says_so_in_the_timeline(app, client, notifier, database_url, create_incident):
    notifier.respond(503, {})
    incident = create_incident()
    app.extensions["background"].outbox.deliver_due(now=later(app, 24 * 3600 + 1))
    (row,) = outbox(database_url)
    assert row.state == "expired"
    events = client.get(f"/api/v1/incidents/{incident['incident_id']}/events").get_json()["events"]
    failures = [e for e in events if e["type"] == "notification_failed"]
    assert failures[-1]["details"].get("gave_up") is True


def test_dead_notification_service_keeps_the_notification_for_later(make_app, notifier, database_url, create_incident):
    client = make_app(notification_service_url=closed_port_url()).test_client()
    create_incident(via=client)
    (row,) = outbox(database_url)
    assert row.state == "pending"


def test_concurrent_claimers_deliver_each_notification_once(app, notifier, database_url, backend, create_incident):
    notifier.respond(503, {})
    for _ in range(12):
        create_incident()
    notifier.reset()
    notifier.respond(200, {})
    outbox_work = app.extensions["background"].outbox
    when = later(app, 6)
    threads = [threading.Thread(target=outbox_work.deliver_due, kwargs={"now": when}) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [r.body["notification_id"] for r in notifier.requests_to(NOTIFY)]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert {r.state for r in outbox(database_url)} == {"sent"}


# --------------------------------------------------------------------------- the real background loop


@pytest.fixture
def own_database(backend, pg_database, sqlite_database):
    """A database of the test's own, so that no other service's background work touches its outbox."""
    url = pg_database() if backend == "postgresql" else sqlite_database()
    migrate.upgrade(Settings(database_url=url))
    return url


def test_background_work_retries_within_ten_seconds(make_app, notifier, own_database, create_incident):
    notifier.respond(503, {})
    app = make_app(database_url=own_database)
    create_incident(via=app.test_client())
    failed_at = time.monotonic()
    notifier.respond(200, {})
    background = app.extensions["background"].start()
    try:
        delivered = wait_until(lambda: [r.state for r in outbox(own_database)] == ["sent"], timeout=15)
        waited = time.monotonic() - failed_at
    finally:
        background.stop()
    assert delivered
    assert waited < 10.5, f"first retry after {waited:.1f}s"
    assert len(notifier.requests_to(NOTIFY)) == 2


def test_background_work_can_be_turned_off():
    assert Settings.from_env({"BACKGROUND_WORK": "false"}).background_work is False
    assert Settings.from_env({}).background_work is True


def test_a_retried_delivery_logs_no_error(app, notifier, database_url, caplog, create_incident):
    # Recording a delivery made by the background work once logged a false ERROR on PostgreSQL
    # (asking an UPDATE without RETURNING for its rows), although the row was recorded.
    notifier.respond(503, {"error": "down"})
    create_incident()
    notifier.respond(200, {"status": "sent"})
    caplog.clear()
    with caplog.at_level("INFO"):
        assert app.extensions["background"].outbox.deliver_due(now=later(app, 6)) == 1
    (row,) = outbox(database_url)
    assert (row.state, row.attempts) == ("sent", 2)
    assert [record.getMessage() for record in caplog.records if record.levelno >= 40] == []
