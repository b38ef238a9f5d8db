"""Alert grouping under concurrency (contract 8, "exactly one"), through real HTTP: two replicas of
2 gevent workers each on one PostgreSQL database, so creates race across processes and inside each
worker's group commit."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import empty_tables
from tests.support.gunicorn import GunicornService
from tests.support.incidents import URL, VALID
from tests.support.peers import FakePeer

NOTIFY = "/api/v1/notify"


@pytest.fixture(scope="module")
def peers():
    oncall, notifier = FakePeer(), FakePeer()
    yield oncall, notifier
    oncall.close()
    notifier.close()


@pytest.fixture(scope="module")
def grouping_database(migrated_urls, postgres_available) -> str:
    return migrated_urls["postgresql"]()


@pytest.fixture(scope="module")
def replicas(grouping_database, peers, tmp_path_factory):
    oncall, notifier = peers
    logs = tmp_path_factory.mktemp("grouping")
    env = {"DATABASE_URL": grouping_database, "ONCALL_SERVICE_URL": oncall.url,
           "NOTIFICATION_SERVICE_URL": notifier.url, "HTTP_CLIENT_TIMEOUT": "5"}
    started = [GunicornService(env, workers=2, log_path=logs / f"{name}.log").start() for name in ("a", "b")]
    yield started
    for service in started:
        service.stop()


@pytest.fixture
def fresh(replicas, peers, grouping_database):
    """Both replicas on an empty database, the peers answering: alice is on call, pages are accepted."""
    empty_tables(grouping_database)
    oncall, notifier = peers
    oncall.reset()
    notifier.reset()
    oncall.respond(200, {"primary": {"name": "Alice", "email": "alice@example.com"}})
    notifier.respond(200, {"status": "sent"})
    return replicas, notifier


def simultaneously(replicas, bodies):
    """POST each body from its own thread, all released together, alternating between the replicas."""
    barrier = threading.Barrier(len(bodies))

    def post(i):
        with requests.Session() as session:
            barrier.wait(timeout=30)
            return session.post(f"{replicas[i % 2].url}{URL}", json=bodies[i], timeout=60)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(post, range(len(bodies))))


def listed(replica, **query) -> dict:
    return requests.get(f"{replica.url}{URL}", params={"limit": 1000, **query}, timeout=10).json()


def test_fifty_simultaneous_creates_with_one_key_make_one_incident_and_one_page(fresh):
    replicas, notifier = fresh
    responses = simultaneously(replicas, [{**VALID, "dedup_key": "db-down"}] * 50)
    assert sorted(r.status_code for r in responses) == [200] * 49 + [201]
    named = {r.json()["incident_id"] for r in responses}
    assert len(named) == 1
    assert {r.headers["Location"] for r in responses} == {f"{URL}/{named.pop()}"}
    assert all(r.headers["Incident-Grouped"] == "true" for r in responses if r.status_code == 200)
    page = listed(replicas[0])
    assert page["total"] == 1 and page["incidents"][0]["grouped_count"] == 49
    assert len(notifier.wait_for(NOTIFY, 2, timeout=2)) == 1, "one page"


def test_several_keys_and_plain_creates_together_open_one_incident_per_key(fresh):
    """Creates of five keys and creates without a key, mixed, land in the same group-commit batches:
    a taken key skips only its own row, never another create of the batch."""
    replicas, notifier = fresh
    bodies = [{**VALID, "dedup_key": f"key-{i % 5}"} if i % 4 else {**VALID, "title": f"plain {i}"}
              for i in range(60)]
    responses = simultaneously(replicas, bodies)
    assert {r.status_code for r in responses} <= {200, 201}
    opened = Counter(body.get("dedup_key") for body, r in zip(bodies, responses, strict=True) if r.status_code == 201)
    assert opened == {None: 15, **{f"key-{k}": 1 for k in range(5)}}
    for k in range(5):
        same_key = {r.json()["incident_id"] for body, r in zip(bodies, responses, strict=True)
                    if body.get("dedup_key") == f"key-{k}"}
        assert len(same_key) == 1
        [incident] = listed(replicas[1], dedup_key=f"key-{k}")["incidents"]
        assert incident["grouped_count"] == 8
    assert listed(replicas[0])["total"] == 20
    assert len(notifier.wait_for(NOTIFY, 20)) == 20
    assert len(notifier.wait_for(NOTIFY, 21, timeout=1)) == 20, "one page per incident"


def test_simultaneous_more_severe_requests_raise_once_and_page_once_more(fresh):
    replicas, notifier = fresh
    first = requests.post(f"{replicas[0].url}{URL}", json={**VALID, "severity": "low", "dedup_key": "k"}, timeout=10)
    assert first.status_code == 201
    assert len(notifier.wait_for(NOTIFY, 1)) == 1
    responses = simultaneously(replicas, [{**VALID, "severity": "critical", "dedup_key": "k"}] * 20)
    assert [r.status_code for r in responses] == [200] * 20
    assert {r.json()["severity"] for r in responses} == {"critical"}
    pages = notifier.wait_for(NOTIFY, 2)
    assert [p.body["severity"] for p in pages] == ["low", "critical"]
    assert len(notifier.wait_for(NOTIFY, 3, timeout=1)) == 2
    events = requests.get(f"{replicas[1].url}{URL}/{first.json()['incident_id']}/events", timeout=10).json()["events"]
    assert Counter(e["type"] for e in events)["severity_raised"] == 1
