"""Analytics answers shared per process: one computation per filter set at a time, a slow answer
fresh until it is ANALYTICS_CACHE_SECONDS old and then served while one background refresh makes its
successor, a cheap one never reused, at most 64 filter sets kept, and at most a quarter of the pool
computing at once.

One file past 300 lines: the reuse rules, their concurrency and the bound on computations are one
cache's behaviour, and the cases share its clock and computation doubles."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from incident_app.analytics_cache import (
    MAX_FILTER_SETS,
    SLOW_AFTER_SECONDS,
    AnalyticsCache,
    computations_for_pool,
)
from incident_app.errors import AnalyticsBusy
from incident_app.repository.analytics import AnalyticsFilters

URL = "/api/v1/incidents/analytics"
ALL = AnalyticsFilters()
CRITICAL = AnalyticsFilters(severity="critical")


class FakeClock:
    """Time that moves only when told to; counts its reads (the cache reads it as each request enters)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.reads += 1
            return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Computation:
    """A fake analytics query that costs `cost` seconds of the fake clock and counts its runs."""

    def __init__(self, clock: FakeClock, *, cost: float) -> None:
        self.clock, self.cost, self.runs = clock, cost, 0

    def __call__(self) -> dict:
        self.runs += 1
        self.clock.advance(self.cost)
        return {"run": self.runs}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --------------------------------------------------------------------------- reuse


def run_now(work: Callable[[], None]) -> None:
    work()


def test_slow_answer_is_fresh_for_max_age_then_served_while_one_refresh_makes_its_successor(clock):
    cache = AnalyticsCache(max_age=30, clock=clock, spawn=run_now)
    compute = Computation(clock, cost=1.5)
    assert cache.answer(ALL, compute) == {"run": 1}
    clock.advance(28.25)  # 29.75 s after the computation began
    assert cache.answer(ALL, compute) == {"run": 1}
    assert compute.runs == 1
    clock.advance(0.25)  # age counts from the start of the computation
    assert cache.answer(ALL, compute) == {"run": 1}  # the stale answer, while its successor is computed
    assert compute.runs == 2
    assert cache.answer(ALL, compute) == {"run": 2}


def test_a_stale_answer_starts_one_refresh_however_many_ask(clock):
    spawned: list[Callable[[], None]] = []
    cache = AnalyticsCache(max_age=30, clock=clock, spawn=spawned.append)
    compute = Computation(clock, cost=1)
    cache.answer(ALL, compute)
    clock.advance(31)
    assert [cache.answer(ALL, compute) for _ in range(5)] == [{"run": 1}] * 5
    assert len(spawned) == 1 and compute.runs == 1
    spawned.pop()()
    assert cache.answer(ALL, compute) == {"run": 2}
    assert not spawned


@pytest.mark.parametrize("outcome", ["error", "cheap"])
def test_a_refresh_that_fails_or_turns_cheap_leaves_the_next_request_to_compute_afresh(clock, outcome):
    cache = AnalyticsCache(max_age=30, clock=clock, spawn=run_now)
    runs = []

    def compute() -> dict:
        runs.append(1)
        if len(runs) == 1:
            clock.advance(1)  # slow: reused
        elif outcome == "error":
            raise RuntimeError("database went away")
        return {"run": len(runs)}

    cache.answer(ALL, compute)
    clock.advance(31)
    assert cache.answer(ALL, compute) == {"run": 1}  # stale, while the refresh fails or comes back cheap
    assert len(runs) == 2
    if outcome == "error":
        with pytest.raises(RuntimeError):  # computed afresh by this request, so the error reaches it
            cache.answer(ALL, compute)
    else:
        assert cache.answer(ALL, compute) == {"run": 3}
    assert len(runs) == 3


@pytest.mark.parametrize(
    ("cost", "reused"), [(0.0, False), (SLOW_AFTER_SECONDS / 2, False), (SLOW_AFTER_SECONDS, True)]
)
def test_only_an_answer_that_took_slow_after_or_longer_is_reused(clock, cost, reused):
    cache = AnalyticsCache(max_age=30, clock=clock)
    compute = Computation(clock, cost=cost)
    cache.answer(ALL, compute)
    assert cache.answer(ALL, compute) == {"run": 1 if reused else 2}


def test_zero_max_age_never_reuses_even_a_slow_answer(clock):
    cache = AnalyticsCache(max_age=0, clock=clock)
    compute = Computation(clock, cost=5)
    assert [cache.answer(ALL, compute) for _ in range(3)] == [{"run": 1}, {"run": 2}, {"run": 3}]


def test_filter_sets_are_kept_apart(clock):
    cache = AnalyticsCache(max_age=30, clock=clock)
    everything, critical = Computation(clock, cost=1), Computation(clock, cost=1)
    cache.answer(ALL, everything)
    cache.answer(CRITICAL, critical)
    assert cache.answer(ALL, everything) == {"run": 1}
    assert cache.answer(AnalyticsFilters(severity="critical"), critical) == {"run": 1}  # equal filters, same set
    assert cache.answer(AnalyticsFilters(service="api"), everything) == {"run": 2}
    assert (everything.runs, critical.runs) == (2, 1)


def test_least_recently_used_filter_set_is_evicted_first(clock):
    cache = AnalyticsCache(max_age=30, clock=clock, max_entries=2)
    first, second, third = AnalyticsFilters(service="a"), AnalyticsFilters(service="b"), AnalyticsFilters(service="c")
    compute = {key: Computation(clock, cost=1) for key in (first, second, third)}
    cache.answer(first, compute[first])
    cache.answer(second, compute[second])
    cache.answer(first, compute[first])  # first is now the most recently used
    cache.answer(third, compute[third])  # evicts second
    assert cache.answer(first, compute[first]) == {"run": 1}
    assert cache.answer(second, compute[second]) == {"run": 2}


def test_default_bound_is_64_filter_sets(clock):
    cache = AnalyticsCache(max_age=30, clock=clock)
    compute = Computation(clock, cost=1)
    filters = [AnalyticsFilters(service=f"svc-{i}") for i in range(MAX_FILTER_SETS + 1)]
    for f in filters:
        cache.answer(f, compute)
    assert MAX_FILTER_SETS == 64
    assert cache.answer(filters[-1], compute) == {"run": 65}  # still kept
    assert cache.answer(filters[0], compute) == {"run": 66}  # evicted


def test_an_error_is_not_kept(clock):
    cache = AnalyticsCache(max_age=30, clock=clock)
    calls = []

    def failing_then_slow() -> dict:
        calls.append(1)
        clock.advance(1)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return {"run": len(calls)}

    with pytest.raises(RuntimeError):
        cache.answer(ALL, failing_then_slow)
    assert cache.answer(ALL, failing_then_slow) == {"run": 2}


# --------------------------------------------------------------------------- single flight


class HeldComputation:
    """A computation that starts, then waits for `release` before producing result()."""

    def __init__(self, result: Callable[[], dict]) -> None:
        self.result, self.runs = result, 0
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self) -> dict:
        self.runs += 1
        self.started.set()
        assert self.release.wait(10), "never released"
        return self.result()


def ask_at_once(cache: AnalyticsCache, clock: FakeClock, compute: HeldComputation, *, requests: int = 10) -> list:
    """`requests` threads ask for the same analytics while the first computation is held, which is
    released once every request is inside the cache. Returns each request's future."""
    with ThreadPoolExecutor(max_workers=requests) as pool:
        futures = [pool.submit(cache.answer, ALL, compute)]
        assert compute.started.wait(5)
        futures += [pool.submit(cache.answer, ALL, compute) for _ in range(requests - 1)]
        wait_until(lambda: clock.reads >= requests)
        compute.release.set()
    return futures


def test_concurrent_requests_share_one_computation(clock):
    # A cheap computation: nothing is reused afterwards, so one run means the requests waited for it.
    cache = AnalyticsCache(max_age=30, clock=clock)
    compute = HeldComputation(lambda: {"total_incidents": 7})
    futures = ask_at_once(cache, clock, compute)
    answers = [future.result(timeout=5) for future in futures]
    assert compute.runs == 1
    assert answers == [{"total_incidents": 7}] * 10
    assert all(answer is answers[0] for answer in answers)
    assert cache.answer(ALL, compute) == {"total_incidents": 7} and compute.runs == 2


def test_concurrent_requests_all_get_the_computations_error(clock):
    cache = AnalyticsCache(max_age=30, clock=clock)
    failure = RuntimeError("statement timeout")

    def fail() -> dict:
        clock.advance(1)  # slow, yet an error is never kept
        raise failure

    compute = HeldComputation(fail)
    futures = ask_at_once(cache, clock, compute)
    assert all(future.exception(timeout=5) is failure for future in futures)
    assert compute.runs == 1
    with pytest.raises(RuntimeError):
        cache.answer(ALL, compute)
    assert compute.runs == 2


# --------------------------------------------------------------------------- through the app


def total(client) -> int:
    response = client.get(URL)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["total_incidents"]


def test_reused_answer_is_served_until_analytics_cache_seconds_have_passed(make_app, create_incident):
    # One second rather than less, so that a busy machine still asks twice within it.
    age = 1.0
    app = make_app(analytics_cache_seconds=age)
    # Every answer counts as slow here: the test data is far too small to be slow for real.
    app.extensions["incident_service"].analytics_cache.slow_after = 0
    client = app.test_client()

    first_asked = time.monotonic()
    assert total(client) == 0
    create_incident(via=client)
    assert total(client) == 0
    assert time.monotonic() - first_asked < age, "too slow to ask twice within the age"

    wait_until(lambda: total(client) == 1, timeout=age + 10)
    assert time.monotonic() - first_asked >= age


def test_cheap_answers_show_a_new_incident_at_once(make_app, create_incident):
    app = make_app()  # default ANALYTICS_CACHE_SECONDS
    # Cheap is below slow_after; on a loaded machine a first SQLite computation can outlast the
    # default 0.1 s (the default itself is pinned by the fake-clock tests above).
    app.extensions["incident_service"].analytics_cache.slow_after = 5.0
    client = app.test_client()
    assert total(client) == 0
    create_incident(via=client)
    assert total(client) == 1


def test_zero_analytics_cache_seconds_turns_reuse_off(make_app, create_incident):
    app = make_app(analytics_cache_seconds=0)
    app.extensions["incident_service"].analytics_cache.slow_after = 0
    client = app.test_client()
    assert total(client) == 0
    create_incident(via=client)
    assert total(client) == 1


# --------------------------------------------------------------------------- turns


def test_no_more_computations_run_at_once_than_the_bound():
    cache = AnalyticsCache(max_age=0, max_concurrent=2)
    release = threading.Event()
    lock = threading.Lock()
    running, peak = [0], [0]

    def compute() -> dict:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(5)
        with lock:
            running[0] -= 1
        return {"ok": True}

    with ThreadPoolExecutor(6) as pool:
        answers = [pool.submit(cache.answer, AnalyticsFilters(service=f"svc-{i}"), compute) for i in range(6)]
        wait_until(lambda: running[0] == 2)
        time.sleep(0.05)  # the other four have had every chance to start, and must not have
        assert peak[0] == 2
        release.set()
        assert [a.result(timeout=5) for a in answers] == [{"ok": True}] * 6
    assert peak[0] == 2


def test_a_computation_that_gets_no_turn_in_time_fails_busy_and_frees_its_filter_set():
    cache = AnalyticsCache(max_age=0, max_concurrent=1, turn_wait=0.05)
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(cache.answer, ALL, lambda: release.wait(5) and {"first": True})
        wait_until(lambda: cache._turns._value == 0)
        with pytest.raises(AnalyticsBusy):
            cache.answer(CRITICAL, lambda: {"never": True})
        release.set()
        assert held.result(timeout=5) == {"first": True}
    assert cache.answer(CRITICAL, lambda: {"second": True}) == {"second": True}  # the failure was not kept


@pytest.mark.parametrize(("pool", "turns"), [(1, 1), (4, 1), (10, 2), (16, 4), (40, 10)])
def test_a_worker_gives_analytics_a_quarter_of_its_pool(pool, turns):
    assert computations_for_pool(pool) == turns


def test_analytics_without_a_turn_answer_503_json_with_retry_after(backend, make_app):
    app = make_app()
    cache = app.extensions["incident_service"].analytics_cache
    cache.turn_wait = 0.05
    while cache._turns.acquire(blocking=False):  # every turn taken, as by long computations
        pass
    response = app.test_client().get(URL)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["message"].startswith("analytics are busy")
