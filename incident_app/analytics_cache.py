"""Analytics answers shared within one process: one computation per filter set at a time, and a costly
answer reused for a short while (each gunicorn worker has its own)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

# Seconds. An answer computed faster than this is never reused: at that cost recomputing is cheaper
# than the staleness a reuse would show, so small installations always see fresh numbers.
SLOW_AFTER_SECONDS = 0.1
# Dashboards ask for a handful of filter sets; the bound keeps arbitrary `since`/`until` values from
# growing the memory of a worker.
MAX_FILTER_SETS = 64


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


class AnalyticsCache:
    """Single flight per filter set, and reuse of a slow answer for at most `max_age` seconds.

    Answers are shared between requests: callers must not mutate them. `threading` primitives are
    cooperative under gevent (gunicorn's workers monkey-patch them) and real in plain threads.
    """

    def __init__(
        self,
        *,
        max_age: float,
        slow_after: float = SLOW_AFTER_SECONDS,
        max_entries: int = MAX_FILTER_SETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.slow_after = slow_after
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()
        self._computations: OrderedDict[Hashable, _Computation] = OrderedDict()

    def answer(self, filters: Hashable, compute: Callable[[], T]) -> T:
        """The answer for `filters`: a reusable one, the one being computed, or a new computation."""
        with self._lock:
            now = self.clock()
            current = self._computations.get(filters)
            joining = current is not None and (not current.done.is_set() or self._fresh(current, now))
            if joining:
                self._computations.move_to_end(filters)
            else:
                current = self._computations[filters] = _Computation(started=now)
                self._computations.move_to_end(filters)
                while len(self._computations) > self.max_entries:
                    # Requests already waiting on an evicted computation still get its answer.
                    self._computations.popitem(last=False)
        if joining:
            current.done.wait()
            return current.outcome()
        return self._compute(filters, current, compute)

    def _compute(self, filters: Hashable, computation: _Computation, compute: Callable[[], T]) -> T:
        try:
            computation.answer = compute()
            return computation.answer
        except BaseException as exc:
            # Anything, even a greenlet kill, must reach the waiters, or they would wait forever.
            computation.error, computation.traceback = exc, exc.__traceback__
            raise
        finally:
            cost = self.clock() - computation.started
            with self._lock:
                computation.reusable = computation.error is None and cost >= self.slow_after and self.max_age > 0
                if not computation.reusable and self._computations.get(filters) is computation:
                    del self._computations[filters]
            computation.done.set()

    def _fresh(self, computation: _Computation, now: float) -> bool:
        # Age counts from the start of the computation: no reused answer is older than max_age.
        return computation.reusable and now - computation.started < self.max_age
