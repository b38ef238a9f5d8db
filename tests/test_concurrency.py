"""Exactly-once under concurrency, through real HTTP: gunicorn with 2 gevent workers on PostgreSQL."""

import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.incidents import VALID


def simultaneously(count, call):
    """Run `call(i)` from `count` threads released together; returns the results in order."""
    barrier = threading.Barrier(count)

    def run(i):
        with requests.Session() as session:
            barrier.wait(timeout=30)
            return call(session, i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def mtta_count(live_service) -> float:
    """How many acknowledges the service's workers observed for VALID's severity."""
    text = requests.get(f"{live_service.url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "incident_mtta_seconds_count" and sample.labels == {"severity": VALID["severity"]})


def create(live_service):
    response = requests.post(f"{live_service.url}/api/v1/incidents", json=VALID, timeout=10)
    assert response.status_code == 201
    return response.json()["incident_id"]


def test_fifty_simultaneous_acknowledges_give_one_acknowledged_at(live_service):
    incident_id = create(live_service)
    url = f"{live_service.url}/api/v1/incidents/{incident_id}"
    responses = simultaneously(50, lambda s, i: s.patch(url, json={"status": "acknowledged"}, timeout=30))
    assert [r.status_code for r in responses] == [200] * 50
    stamps = {r.json()["acknowledged_at"] for r in responses}
    assert len(stamps) == 1 and None not in stamps
    assert requests.get(url, timeout=10).json()["acknowledged_at"] == stamps.pop()


def test_simultaneous_acknowledges_write_one_event_and_observe_mtta_once(live_service):
    incident_id = create(live_service)
    url = f"{live_service.url}/api/v1/incidents/{incident_id}"
    before = mtta_count(live_service)
    responses = simultaneously(30, lambda s, i: s.patch(url, json={"status": "acknowledged"}, timeout=30))
    assert [r.status_code for r in responses] == [200] * 30
    timeline = requests.get(f"{url}/events", timeout=10).json()["events"]
    assert [e["type"] for e in timeline].count("acknowledged") == 1
    assert mtta_count(live_service) == before + 1


def test_simultaneous_acknowledge_and_resolve_end_resolved(live_service):
    incident_id = create(live_service)
    url = f"{live_service.url}/api/v1/incidents/{incident_id}"
    statuses = ["acknowledged", "resolved"] * 10
    responses = simultaneously(20, lambda s, i: s.patch(url, json={"status": statuses[i]}, timeout=30))
    # An acknowledge that loses to a resolve is refused (resolved → acknowledged); nothing else fails.
    assert {r.status_code for r in responses} <= {200, 400}
    assert all(r.status_code == 200 for r, s in zip(responses, statuses, strict=True) if s == "resolved")
    final = requests.get(url, timeout=10).json()
    assert final["status"] == "resolved" and final["resolved_at"] is not None


def test_forty_simultaneous_notes_all_survive(live_service):
    incident_id = create(live_service)
    url = f"{live_service.url}/api/v1/incidents/{incident_id}"
    responses = simultaneously(40, lambda s, i: s.patch(url, json={"note": f"note {i}"}, timeout=30))
    assert [r.status_code for r in responses] == [200] * 40
    notes = requests.get(url, timeout=10).json()["notes"]
    assert sorted(n["content"] for n in notes) == sorted(f"note {i}" for i in range(40))


def test_forty_simultaneous_posted_and_patched_notes_all_survive(live_service):
    """The web UI's POST …/notes appends as a PATCH note does: together, none is lost."""
    incident_id = create(live_service)
    url = f"{live_service.url}/api/v1/incidents/{incident_id}"

    def append(session, i):
        if i % 2:
            return session.patch(url, json={"note": f"note {i}"}, timeout=30)
        return session.post(f"{url}/notes", json={"content": f"note {i}", "author": "SRE Admin"}, timeout=30)

    responses = simultaneously(40, append)
    assert [r.status_code for r in responses] == [200 if i % 2 else 201 for i in range(40)]
    notes = requests.get(url, timeout=10).json()["notes"]
    assert sorted(n["content"] for n in notes) == sorted(f"note {i}" for i in range(40))
    assert len({n["id"] for n in notes}) == 40
    posted = [r.json() for i, r in enumerate(responses) if i % 2 == 0]
    assert all(note in notes for note in posted)


def test_thirty_simultaneous_creates_give_thirty_incidents(live_service):
    url = f"{live_service.url}/api/v1/incidents"
    responses = simultaneously(30, lambda s, i: s.post(url, json={**VALID, "title": f"storm {i}"}, timeout=30))
    assert [r.status_code for r in responses] == [201] * 30
    ids = {r.json()["incident_id"] for r in responses}
    assert len(ids) == 30
    # Recorded in shared statements (group commit), each still got its own assignee and events.
    assert {r.json()["assigned_to"] for r in responses} == {"alice@example.com"}
    for incident_id in ids:
        assert requests.get(f"{url}/{incident_id}", timeout=10).json()["assigned_to"] == "alice@example.com"
        events = requests.get(f"{url}/{incident_id}/events", timeout=10).json()["events"]
        assert [e["type"] for e in events] == ["created", "assigned", "notified"]
