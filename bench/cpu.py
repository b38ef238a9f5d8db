"""CPU time per request, by process: the service's workers and the PostgreSQL backends serving
this benchmark's database.

On a shared machine req/s moves with whatever else runs, while the CPU a request costs each process
barely does; this is the figure to compare before and after a change. PostgreSQL's backends are
those connected to the benchmark's database (the pools are full from the start, DB_POOL_MIN), so
other databases on the same server do not count; its shared background processes (WAL writer,
checkpointer) are left out too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import psutil
import sqlalchemy as sa


def _seconds(processes: Iterable[psutil.Process]) -> dict[int, float]:
    used = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            used[process.pid] = times.user + times.system
    return used


def backends(url: str) -> list[psutil.Process]:
    """The PostgreSQL backends connected to `url`'s database (none when the server is not local)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            pids = conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalars().all()
    finally:
        engine.dispose()
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


class CpuMeter:
    """Started before a run and read after it: milliseconds of CPU per request for each group."""

    def __init__(self, groups: dict[str, list[psutil.Process]]) -> None:
        self.groups = groups
        self.before = {name: _seconds(processes) for name, processes in groups.items()}

    def per_request_ms(self, requests: int) -> dict[str, float]:
        spent = {}
        for name, processes in self.groups.items():
            after = _seconds(processes)
            # Only processes alive at both ends count: one that left mid-run took its CPU with it.
            seconds = sum(after[pid] - self.before[name][pid] for pid in after if pid in self.before[name])
            spent[name] = round(1000 * seconds / requests, 3) if requests else 0.0
        return spent


def in_this_process(call: Callable[[int], bool], count: int, in_flight: int, warmup: int = 200) -> dict[str, float]:
    """`call` run `count` times, `in_flight` at once (gevent), after `warmup` runs: how many answered
    True, and this process's CPU seconds and the wall seconds they took (the client's side of a
    peer, measured apart from the peer in its own process)."""
    import gevent.pool  # only the gevent scripts (monkey-patched first) measure this way

    pool = gevent.pool.Pool(in_flight)
    sum(pool.imap_unordered(call, range(warmup)))
    cpu, wall = time.process_time(), time.monotonic()
    answered = sum(pool.imap_unordered(call, range(count)))
    return {"answered": answered, "cpu_s": time.process_time() - cpu, "wall_s": time.monotonic() - wall}
