"""Analytics answers shared within one process: one computation per filter set at a time, a bounded
number of computations at once, and a costly answer reused for a short while, then refreshed in the
background (each gunicorn worker has its own)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from incident_app.errors import AnalyticsBusy

T = TypeVar("T")

# Seconds. An answer computed faster than this is never reused: at that cost recomputing is cheaper
# than the staleness a reuse would show, so small installations always see fresh numbers.
SLOW_AFTER_SECONDS = 0.1
# Dashboards ask for a handful of filter sets; the bound keeps arbitrary `since`/`until` values from
# growing the memory of a worker.
MAX_FILTER_SETS = 64
# Seconds a computation waits for its turn before its requests answer 503: well inside a client's
# patience, and long enough that a burst of cold filter sets is worked through rather than refused.
TURN_WAIT_SECONDS = 20.0


def computations_for_pool(pool_size: int) -> int:
    """How many analytics computations one worker runs at once: a quarter of its database pool (at
    least one), so that however many cold filter sets arrive, most connections stay free for the
    creates, acknowledges, probes and background work that share the pool."""
    return max(1, pool_size // 4)


class _Computation:
    """One computation for one filter set; requests that join it wait on `done`."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.done = threading.Event()
        self.answer: Any = None
        self.error: BaseException | None = None
        self.traceback: TracebackType | None = None
        self.reusable = False

    def outcome(self) -> Any:
        if self.error is not None:
            # Every waiter raises the one exception: its traceback restarts from the computation's
            # each time instead of growing by every waiter's frames.
            raise self.error.with_traceback(self.traceback)
        return self.answer


def _in_background(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="analytics-refresh", daemon=True).start()


class AnalyticsCache:
    """Single flight per filter set, and reuse of a slow answer: fresh for `max_age` seconds, then
    still served while one background computation makes its successor.

    Waiting for a costly recomputation at every expiry held every request of the worker for its
    length (seconds at a million rows under load, some past a client's timeout); now only the
    first computation of a filter set is waited for. Answers are shared between requests: callers
    must not mutate them. `threading` primitives are cooperative under gevent (gunicorn's workers
    monkey-patch them) and real in plain threads.

    At most `max_concurrent` computations run at once (None: no bound); the others wait for a turn,
    up to `turn_wait` seconds, then fail with AnalyticsBusy. Each computation holds a database
    connection for its whole length: unbounded, 32 cold filter sets at a million rows held every
    connection of the pool for seconds, and creates failed with 503 waiting for one.
    """

    def __init__(
        self,
        *,
        max_age: float,
        max_concurrent: int | None = None,
        turn_wait: float = TURN_WAIT_SECONDS,
        slow_after: float = SLOW_AFTER_SECONDS,
        max_entries: int = MAX_FILTER_SETS,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] = _in_background,
    ) -> None:
        self.max_age = max_age
        self.turn_wait = turn_wait
        self.slow_after = slow_after
        self.max_entries = max_entries
        self.clock = clock
        self.spawn = spawn
        self._turns = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None
        self._lock = threading.Lock()
        self._computations: OrderedDict[Hashable, _Computation] = OrderedDict()
        self._refreshing: set[Hashable] = set()

    def answer(self, filters: Hashable, compute: Callable[[], T]) -> T:
        """The answer for `filters`: a reusable one (refreshed in the background once it is
        `max_age` old), the one being computed, or a new computation."""
        refresh = False
        with self._lock:
            now = self.clock()
            current = self._computations.get(filters)
            computing = current is None or (current.done.is_set() and not current.reusable)
            if computing:
                current = self._computations[filters] = _Computation(started=now)
                while len(self._computations) > self.max_entries:
                    # Requests already waiting on an evicted computation still get its answer.
                    self._computations.popitem(last=False)
            elif current.done.is_set() and now - current.started >= self.max_age and filters not in self._refreshing:
                refresh = True
                self._refreshing.add(filters)
            self._computations.move_to_end(filters)
        if computing:
            self._run(filters, current, compute)
        elif refresh:
            self.spawn(lambda: self._refresh(filters, current, compute))
        current.done.wait()
        return current.outcome()

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        if self._turns is None:
            yield
            return
        if not self._turns.acquire(timeout=self.turn_wait):
            raise AnalyticsBusy(self.turn_wait)
        try:
            yield
        finally:
            self._turns.release()

    def _run(self, filters: Hashable, computation: _Computation, compute: Callable[[], Any]) -> None:
        try:
            with self._turn():
                # An answer's age and cost count from when it was computed, not from its wait.
                computation.started = self.clock()
                computation.answer = compute()
        except BaseException as exc:
            # Anything, even a greenlet kill, must reach the waiters, or they would wait forever.
            computation.error, computation.traceback = exc, exc.__traceback__
        finally:
            cost = self.clock() - computation.started
            with self._lock:
                computation.reusable = computation.error is None and cost >= self.slow_after and self.max_age > 0
                if not computation.reusable and self._computations.get(filters) is computation:
                    del self._computations[filters]
            computation.done.set()

    def _refresh(self, filters: Hashable, stale: _Computation, compute: Callable[[], Any]) -> None:
        """Compute the successor of a stale answer, which is served meanwhile; it replaces the stale
        one when reusable, and otherwise (an error, or cheap again) the next request computes afresh."""
        successor = _Computation(started=self.clock())
        try:
            self._run(filters, successor, compute)
        finally:
            with self._lock:
                self._refreshing.discard(filters)
                if self._computations.get(filters) is stale:
                    if successor.reusable:
                        self._computations[filters] = successor
                    else:
                        del self._computations[filters]
