"""Alert grouping (contract 8), on both backends: a create with the dedup_key of an unresolved
incident is folded into it (200, `Incident-Grouped: true`, no page), severity only rises and pages
again, a resolved incident frees its key, a replay answers as the first request did, lists filter
by the key, and a bad key is a 422. Concurrency through real gunicorn is in test_grouping_replicas.py.

Over 300 lines: every point of contract section 8 on both databases, with the grouped answer's
alerts and PostgreSQL's batched grouping, in the order the issue lists them."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from incident_app import schemas
from incident_app.repository.incidents import Grouping
from tests.support.incidents import URL, VALID
from tests.support.platform_alerts import add_platform_alert, platform_table
from tests.test_metrics import families, open_counts
from tests.test_stream import follow

NOTIFY = "/api/v1/notify"
ONCALL = "/api/v1/oncall/current"
KEY = "payment-api/error-rate"


def alert(client, *, key=KEY, headers=None, **fields):
    return client.post(URL, json={**VALID, "dedup_key": key, **fields}, headers=headers or {})


def events_of(client, incident_id):
    return client.get(f"{URL}/{incident_id}/events").get_json()["events"]


def grouped_total(client) -> dict[str, float]:
    return {s.labels["severity"]: s.value for s in families(client)["incidents_grouped"].samples
            if s.name.endswith("_total")}


def test_first_create_with_a_key_opens_an_incident_that_shows_its_key(client):
    response = alert(client, key="  payment-api/error-rate ")
    assert response.status_code == 201
    assert "Incident-Grouped" not in response.headers
    incident = response.get_json()
    assert incident["dedup_key"] == KEY, "trimmed"
    assert incident["grouped_count"] == 0 and incident["last_grouped_at"] is None


def test_create_with_the_key_of_an_unresolved_incident_is_grouped_into_it(client, oncall, notifier):
    first = alert(client).get_json()
    alert_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    response = alert(client, title="Payment API still failing", alert_ids=alert_ids)
    assert response.status_code == 200
    assert response.headers["Incident-Grouped"] == "true"
    assert response.headers["Location"] == f"{URL}/{first['incident_id']}"
    grouped = response.get_json()
    assert grouped["incident_id"] == first["incident_id"]
    assert grouped["title"] == first["title"], "the incident keeps its own title"
    assert grouped["grouped_count"] == 1 and grouped["last_grouped_at"] is not None
    assert sorted(grouped["alert_ids"]) == sorted(alert_ids)
    assert client.get(f"{URL}/{first['incident_id']}").get_json() == grouped
    assert client.get(URL).get_json()["total"] == 1
    assert len(oncall.requests_to(ONCALL)) == 1 and len(notifier.requests_to(NOTIFY)) == 1, "nobody paged again"
    grouped_event = events_of(client, first["incident_id"])[-1]
    assert grouped_event["type"] == "alert_grouped"
    assert grouped_event["details"] == {"title": "Payment API still failing", "severity": "high",
                                        "alert_ids": alert_ids}


def test_grouping_links_alerts_idempotently_and_counts_every_request(client):
    alert_id = str(uuid.uuid4())
    alert(client, alert_ids=[alert_id])
    alert(client, alert_ids=[alert_id])
    incident = alert(client, alert_ids=[alert_id]).get_json()
    assert incident["alert_ids"] == [alert_id]
    assert incident["grouped_count"] == 2


def test_grouped_requests_count_by_the_incidents_severity_after_grouping(client):
    alert(client, severity="high")
    alert(client, severity="low")
    alert(client, severity="critical")
    assert grouped_total(client) == {"critical": 1.0, "high": 1.0, "medium": 0.0, "low": 0.0}


def test_a_more_severe_request_raises_the_incident_and_pages_the_assignee_again(client, notifier):
    incident = alert(client, severity="medium").get_json()
    assert len(notifier.wait_for(NOTIFY, 1)) == 1
    raised = alert(client, severity="critical")
    assert raised.status_code == 200
    assert raised.get_json()["severity"] == "critical"
    pages = notifier.requests_to(NOTIFY)
    assert len(pages) == 2
    assert pages[1].body["severity"] == "critical" and pages[1].body["engineer"] == "alice@example.com"
    assert pages[1].body["incident_id"] == incident["incident_id"]
    assert pages[1].body["notification_id"] != pages[0].body["notification_id"]
    types = [e["type"] for e in events_of(client, incident["incident_id"])]
    assert types[-3:] == ["alert_grouped", "severity_raised", "notified"]
    raise_event = events_of(client, incident["incident_id"])[-2]
    assert raise_event["details"] == {"from": "medium", "to": "critical"}


def test_a_less_or_equally_severe_request_leaves_the_severity_and_pages_nobody(client, notifier):
    alert(client, severity="high")
    for severity in ("low", "medium", "high"):
        assert alert(client, severity=severity).get_json()["severity"] == "high"
    assert len(notifier.requests_to(NOTIFY)) == 1
    assert "severity_raised" not in {e["type"] for e in events_of(client, alert(client).get_json()["incident_id"])}


def test_open_incidents_and_list_totals_follow_a_raised_severity(client):
    alert(client, severity="low")
    alert(client, severity="critical")
    assert open_counts(client) == {"critical": 1, "high": 0, "medium": 0, "low": 0}
    assert client.get(f"{URL}?severity=critical").get_json()["total"] == 1
    assert client.get(f"{URL}?severity=low").get_json()["total"] == 0


def test_an_acknowledged_incident_still_groups(client):
    incident = alert(client).get_json()
    client.patch(f"{URL}/{incident['incident_id']}", json={"status": "acknowledged"})
    response = alert(client)
    assert response.status_code == 200 and response.get_json()["incident_id"] == incident["incident_id"]
    assert response.get_json()["status"] == "acknowledged"


def test_after_resolve_the_next_request_with_the_key_opens_a_new_incident(client, notifier):
    first = alert(client).get_json()
    client.patch(f"{URL}/{first['incident_id']}", json={"status": "resolved"})
    response = alert(client)
    assert response.status_code == 201
    second = response.get_json()
    assert second["incident_id"] != first["incident_id"] and second["dedup_key"] == KEY
    assert len(notifier.requests_to(NOTIFY)) == 2, "the new incident is paged"
    assert alert(client).get_json()["incident_id"] == second["incident_id"]


def test_creates_without_a_key_or_with_other_keys_are_never_grouped(client):
    assert client.post(URL, json=VALID).status_code == 201
    assert client.post(URL, json={**VALID, "dedup_key": None}).status_code == 201
    assert alert(client, key="a").status_code == 201
    assert alert(client, key="b").status_code == 201
    assert alert(client, key="A").status_code == 201, "keys are compared exactly"
    assert client.get(URL).get_json()["total"] == 5


def test_lists_filter_by_dedup_key_and_their_items_carry_the_grouping_fields(client):
    first = alert(client).get_json()
    client.patch(f"{URL}/{first['incident_id']}", json={"status": "resolved"})
    second = alert(client).get_json()
    alert(client)
    alert(client, key="other")
    page = client.get(f"{URL}?dedup_key=%20{KEY}").get_json()
    assert page["total"] == 2
    assert [item["incident_id"] for item in page["incidents"]] == [second["incident_id"], first["incident_id"]]
    assert page["incidents"][0]["grouped_count"] == 1 and page["incidents"][0]["dedup_key"] == KEY
    assert page["incidents"][0]["last_grouped_at"] is not None
    assert client.get(f"{URL}?dedup_key={KEY}&status=resolved").get_json()["total"] == 1
    assert client.get(f"{URL}?dedup_key=nobody").get_json() == {"incidents": [], "total": 0, "limit": 50,
                                                                 "offset": 0}


@pytest.mark.parametrize("key", ["", "   ", "x" * 256, "a\x00b", 42, ["k"]])
def test_bad_dedup_key_is_422_naming_the_field(client, key):
    response = alert(client, key=key)
    assert response.status_code == 422
    assert "dedup_key" in response.get_json()["errors"]


@pytest.mark.parametrize("key", ["", "x" * 256, "a\x00b"])
def test_bad_dedup_key_filter_is_422(client, key):
    response = client.get(URL, query_string={"dedup_key": key})
    assert response.status_code == 422
    assert "dedup_key" in response.get_json()["errors"]


def test_a_key_of_255_characters_is_accepted(client):
    assert alert(client, key="k" * 255).status_code == 201
    assert alert(client, key="k" * 255).status_code == 200


def test_an_insert_another_create_beat_to_the_key_is_skipped_and_the_create_grouped(app, client, notifier,
                                                                                   monkeypatch):
    """The race's loser: its grouping ran before the winner's insert committed (here: the first
    grouping misses), so it inserts; the partial unique index skips that insert, nothing of it is
    written, and the next round groups it into the winner."""
    winner = alert(client).get_json()
    store = app.extensions["store"]
    real, missed = store.group_into, []
    monkeypatch.setattr(store, "group_into", lambda *a, **k: missed.append(1) if not missed else real(*a, **k))
    response = alert(client, alert_ids=[str(uuid.uuid4())])
    assert response.status_code == 200 and response.get_json()["incident_id"] == winner["incident_id"]
    assert client.get(URL).get_json()["total"] == 1
    assert len(notifier.requests_to(NOTIFY)) == 1
    assert [e["type"] for e in events_of(client, winner["incident_id"])].count("created") == 1


def test_a_key_whose_incident_is_resolved_between_every_two_writes_is_a_503_not_a_500(app, client, monkeypatch):
    """Each round groups (none found: resolved) and inserts (skipped: another create took the key),
    as an incident resolved and reopened in between, over and over, would make it; five rounds, then 503."""
    store = app.extensions["store"]
    calls = []
    monkeypatch.setattr(store, "group_into", lambda *args, **kwargs: calls.append("group"))
    monkeypatch.setattr(store, "insert_new", lambda new: calls.append("insert"))
    response = alert(client)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json()["code"] == 503 and "dedup_key" in response.get_json()["message"]
    assert calls == ["group", "insert"] * 5


# --------------------------------------------------------------------------- Idempotency-Key


def test_idempotent_replay_of_a_grouped_request_answers_200_grouped(client, notifier):
    first = alert(client).get_json()
    grouped = alert(client, headers={"Idempotency-Key": "storm-2"}, severity="critical")
    replay = alert(client, headers={"Idempotency-Key": "storm-2"}, severity="critical")
    assert grouped.status_code == replay.status_code == 200
    assert replay.headers["Incident-Grouped"] == "true" and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["incident_id"] == first["incident_id"]
    assert replay.get_json()["grouped_count"] == 1, "a replay is not grouped again"
    assert len(notifier.requests_to(NOTIFY)) == 2, "the raise paged once, the replay nobody"


def test_idempotent_replay_of_the_opening_request_answers_201(client):
    opened = alert(client, headers={"Idempotency-Key": "storm-1"})
    alert(client)
    replay = alert(client, headers={"Idempotency-Key": "storm-1"})
    assert opened.status_code == replay.status_code == 201
    assert "Incident-Grouped" not in replay.headers and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["incident_id"] == opened.get_json()["incident_id"]
    assert replay.get_json()["grouped_count"] == 1, "the incident as it stands now"


# --------------------------------------------------------------------------- the feed


def test_grouping_events_go_out_on_the_feed_with_the_incident_as_it_stands(client):
    frames = follow(client, "?types=alert_grouped,severity_raised")
    try:
        incident_id = alert(client, severity="low").get_json()["incident_id"]
        alert(client, severity="high")
        grouped, raised = frames.until(2)
    finally:
        frames.close()
    assert (grouped["event"], raised["event"]) == ("alert_grouped", "severity_raised")
    assert grouped["data"]["incident_id"] == raised["data"]["incident_id"] == incident_id
    assert grouped["data"]["details"]["severity"] == "high"
    assert raised["data"]["details"] == {"from": "low", "to": "high"}
    assert raised["data"]["incident"]["severity"] == "high" and raised["data"]["incident"]["grouped_count"] == 1


def test_grouping_events_are_in_the_timeline_schema_and_the_feeds_type_filter(client):
    spec = client.get("/openapi.json").get_json()
    event_types = spec["components"]["schemas"]["Event"]["properties"]["type"]["enum"]
    assert {"alert_grouped", "severity_raised"} <= set(event_types)
    response = client.get("/api/v1/stream", query_string={"types": "alert_grouped,severity_raised", "after": "x"})
    assert response.status_code == 422 and set(response.get_json()["errors"]) == {"after"}


# --------------------------------------------------------------------------- the grouped answer's alerts


def test_the_grouped_answer_carries_the_alerts_as_get_one_does_in_order_and_shape(client, clock):
    """A grouped answer's alerts are written apart from the rest of the document (on PostgreSQL by
    the database): the same entries, in the same order (oldest link first, then by alert id), as
    GET one's, and the body is the incident IncidentSchema declares."""
    t0 = datetime(2026, 11, 26, 10, 0, 0, 100, tzinfo=UTC)
    clock.set(t0)
    first = alert(client, alert_ids=[str(uuid.UUID(int=9))]).get_json()
    clock.set(t0 + timedelta(seconds=1))
    together = [str(uuid.UUID(int=n)) for n in (7, 3, 5)]  # linked at one time: by alert id
    alert(client, alert_ids=together)
    clock.set(t0 + timedelta(seconds=2, microseconds=-100))
    response = alert(client, alert_ids=[str(uuid.UUID(int=1)), together[0]])
    assert response.status_code == 200 and response.mimetype == "application/json"
    grouped = response.get_json()
    read = client.get(f"{URL}/{first['incident_id']}").get_json()
    assert grouped == read
    assert grouped["alert_ids"] == [str(uuid.UUID(int=n)) for n in (9, 3, 5, 7, 1)]
    assert [a["linked_at"] for a in grouped["alerts"]] == [
        "2026-11-26T10:00:00.000100+00:00", *["2026-11-26T10:00:01.000100+00:00"] * 3,
        "2026-11-26T10:00:02.000000+00:00"]
    assert grouped["alerts"][0] == {"alert_id": str(uuid.UUID(int=9)), "linked_at": "2026-11-26T10:00:00.000100+00:00",
                                    "url": f"http://alert-ingestion:8001/api/v1/alerts/{uuid.UUID(int=9)}"}
    assert schemas.IncidentSchema().validate(grouped) == {}
    assert list(grouped)[-2:] == ["alerts", "alert_ids"], "the alerts last, as in every full incident"


def test_an_incident_grouped_without_alerts_answers_empty_lists(client):
    alert(client)
    grouped = alert(client).get_json()
    assert grouped["alerts"] == [] and grouped["alert_ids"] == []
    assert client.get(f"{URL}/{grouped['incident_id']}").get_json() == grouped


def test_a_grouped_answer_reads_the_alerts_after_its_commit_those_of_other_requests_included(client):
    first = alert(client, alert_ids=[str(uuid.UUID(int=1))]).get_json()
    linked = client.post(f"{URL}/{first['incident_id']}/alerts", json={"alert_ids": [str(uuid.UUID(int=2))]})
    assert linked.status_code == 200
    grouped = alert(client, alert_ids=[str(uuid.UUID(int=3))]).get_json()
    assert grouped["alert_ids"] == [str(uuid.UUID(int=n)) for n in (1, 2, 3)]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_grouped_answer_carries_the_platforms_alert_fields_as_get_one_does(client, clock, database_url):
    """With the platform's alerts table the entries the database writes carry its fields (null ones
    included) for the alerts it holds, and the link alone for the others, as GET one's."""
    t0 = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
    clock.set(t0)
    known, unknown, silent = (uuid.UUID(int=n) for n in (1, 2, 3))
    with platform_table(database_url) as conn:
        add_platform_alert(conn, known, 'p99 "latency" 2.3 s ✓', t0 - timedelta(seconds=90))
        add_platform_alert(conn, silent, None, None)
        first = alert(client, alert_ids=[str(known)]).get_json()
        grouped = alert(client, alert_ids=[str(unknown), str(silent)]).get_json()
        read = client.get(f"{URL}/{first['incident_id']}").get_json()
    assert grouped == read
    by_id = {a["alert_id"]: a for a in grouped["alerts"]}
    assert by_id[str(known)] == {
        "alert_id": str(known), "linked_at": "2026-11-26T10:00:00.123456+00:00", "service": "checkout",
        "severity": "warning", "message": 'p99 "latency" 2.3 s ✓', "timestamp": "2026-11-26T09:58:30.123456+00:00",
        "url": f"http://alert-ingestion:8001/api/v1/alerts/{known}"}
    assert set(by_id[str(unknown)]) == {"alert_id", "linked_at", "url"}
    assert by_id[str(silent)]["message"] is None and by_id[str(silent)]["timestamp"] is None


# --------------------------------------------------------------------------- PostgreSQL's batched grouping

postgresql_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def grouping(key, *alert_ids, at=None, title="again"):
    return Grouping(key, at or datetime.now(UTC), list(alert_ids), {"title": title, "severity": "high",
                                                                    "alert_ids": [str(a) for a in alert_ids]})


@postgresql_only
def test_one_statement_groups_many_creates_each_counted_linked_and_recorded_in_order(app, client):
    """The group commit's write (incidents.group_many): two creates of one key, one of another, one
    of a key nobody has and one of a resolved incident's key, in one statement."""
    a = alert(client, key="a").get_json()
    b = alert(client, key="b").get_json()
    resolved = alert(client, key="gone").get_json()
    assert client.patch(f"{URL}/{resolved['incident_id']}", json={"status": "resolved"}).status_code == 200
    a1, a2, b1 = (uuid.UUID(int=n) for n in (1, 2, 3))
    t0 = datetime(2026, 11, 26, 10, 0, 0, 5, tzinfo=UTC)
    batch = [grouping("a", a1, at=t0, title="first"), grouping("b", b1, at=t0), grouping("nobody", a1),
             grouping("a", a1, a2, at=t0 + timedelta(seconds=1), title="second"), grouping("gone", a2)]
    rows = app.extensions["store"].group_many(batch)
    assert [row and row.incident_id for row in rows] == [a["incident_id"], b["incident_id"], None,
                                                         a["incident_id"], None]
    assert rows[0].grouped_count == rows[3].grouped_count == 2 and rows[1].grouped_count == 1
    assert rows[0].last_grouped_at == t0 + timedelta(seconds=1)
    read = client.get(f"{URL}/{a['incident_id']}").get_json()
    assert read["alert_ids"] == [str(a1), str(a2)]
    assert read["alerts"][0]["linked_at"] == "2026-11-26T10:00:00.000005+00:00", "the first create's time"
    grouped_events = [e for e in events_of(client, a["incident_id"]) if e["type"] == "alert_grouped"]
    assert [e["details"]["title"] for e in grouped_events] == ["first", "second"]
    assert client.get(f"{URL}/{b['incident_id']}").get_json()["alert_ids"] == [str(b1)]
    assert client.get(f"{URL}/{resolved['incident_id']}").get_json()["grouped_count"] == 0
    assert client.get(URL, query_string={"dedup_key": "nobody"}).get_json()["total"] == 0


@postgresql_only
def test_batches_sharing_keys_in_opposite_orders_never_deadlock(app, client):
    """Each batch locks its incidents in key order, whatever the order of its creates."""
    for key in ("a", "b", "c"):
        alert(client, key=key)
    store = app.extensions["store"]
    errors = []

    def run(keys):
        try:
            for _ in range(30):
                store.group_many([grouping(key, uuid.uuid4()) for key in keys])
        except Exception as error:  # a deadlock is an OperationalError
            errors.append(error)

    threads = [threading.Thread(target=run, args=(keys,)) for keys in (("a", "b", "c"), ("c", "b", "a"), ("b", "a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    counts = {key: client.get(URL, query_string={"dedup_key": key}).get_json()["incidents"][0]["grouped_count"]
              for key in ("a", "b", "c")}
    assert counts == {"a": 90, "b": 90, "c": 60}
