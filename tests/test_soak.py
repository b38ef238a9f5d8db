"""Soak: mixed traffic across 2 gevent workers for a bounded time, memory measured after a warm-up
and at the end. Marked slow: `pytest -m slow` (and .ci/run) run it; `-m "not slow"` skips it."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter

import psutil
import pytest
import requests

from tests.support.gunicorn import GunicornService
from tests.support.peers import FakePeer

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "90"))
WARMUP_SECONDS = 15.0
CLIENTS = 8
# A worker may grow this much after warm-up (allocator arenas, caches at their bounds), not more.
GROWTH_BOUND_MB = 40


def worker_rss_mb(service: GunicornService) -> dict[int, float]:
    master = psutil.Process(service.process.pid)
    return {child.pid: child.memory_info().rss / 2**20 for child in master.children()}


@pytest.mark.slow
def test_mixed_traffic_keeps_memory_flat_and_answers_without_errors(pg_database, tmp_path):
    oncall, notifier = FakePeer(), FakePeer()
    oncall.respond(200, {"primary": {"email": "alice@example.com"}, "secondary": {"email": "bob@example.com"}})
    notifier.respond(200, {})
    service = GunicornService(
        {"DATABASE_URL": pg_database(), "ONCALL_SERVICE_URL": oncall.url, "NOTIFICATION_SERVICE_URL": notifier.url,
         "HTTP_CLIENT_TIMEOUT": "2", "ESCALATION_TIMEOUT_MINUTES": "0.05", "ESCALATION_CHECK_SECONDS": "1",
         "DB_POOL_MAX": "4"},
        workers=2, log_path=tmp_path / "soak.log",
    ).start()
    api = f"{service.url}/api/v1/incidents"
    statuses: Counter = Counter()
    unexpected: list[str] = []
    stop = threading.Event()

    def one_round(session: requests.Session, rng: random.Random) -> None:
        def call(method, url, ok, **kwargs):
            response = session.request(method, url, timeout=30, **kwargs)
            statuses[response.status_code] += 1
            if response.status_code not in ok:
                unexpected.append(f"{method} {url} → {response.status_code} {response.text[:200]}")
            return response

        body = {"title": f"soak {rng.random()}", "service": rng.choice(["api", "db", "web"]),
                "severity": rng.choice(["critical", "high", "medium", "low"]),
                "alert_ids": [str(uuid.uuid4())]}
        headers = {"Idempotency-Key": uuid.uuid4().hex} if rng.random() < 0.3 else {}
        created = call("POST", api, {201}, json=body, headers=headers).json()
        url = f"{api}/{created['incident_id']}"
        if headers:
            call("POST", api, {201}, json=body, headers=headers)  # a retry: replayed
        call("GET", url, {200})
        call("POST", f"{url}/alerts", {200}, json={"alert_ids": [str(uuid.uuid4())]})
        call("PATCH", url, {200}, json={"note": "looking", "author": "soak"})
        if rng.random() < 0.7:
            call("PATCH", url, {200}, json={"status": "acknowledged"})
        if rng.random() < 0.5:
            call("PATCH", url, {200}, json={"status": "resolved"})
        call("GET", f"{url}/events", {200})
        call("GET", api, {200}, params={"limit": 20, "severity": body["severity"]})
        if rng.random() < 0.2:
            call("GET", f"{api}/analytics", {200})
        call("GET", f"{service.url}/health/live", {200})

    def client(seed: int) -> None:
        rng, session = random.Random(seed), requests.Session()
        while not stop.is_set():
            try:
                one_round(session, rng)
            except requests.RequestException as exc:
                unexpected.append(f"transport error: {exc}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(WARMUP_SECONDS)
        start = worker_rss_mb(service)
        time.sleep(SOAK_SECONDS)
        end = worker_rss_mb(service)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        service.stop()
        oncall.close()
        notifier.close()

    total = sum(statuses.values())
    growth = {pid: end[pid] - start[pid] for pid in start if pid in end}
    print(f"\nsoak: {total} requests in {WARMUP_SECONDS + SOAK_SECONDS:.0f}s (warm-up included),"
          f" by status {dict(statuses)};"
          f" worker RSS MB start {start} end {end}")
    assert unexpected == []
    assert total > 100
    assert set(start) == set(end), "no worker died or was replaced"
    assert all(delta < GROWTH_BOUND_MB for delta in growth.values()), growth
