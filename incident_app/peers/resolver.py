"""Host names of webhook receivers, looked up on threads of their own and kept for a short while.

Under gevent every `getaddrinfo` of the process runs on the hub's one pool of 10 OS threads, the
On-Call and Notification calls' included. Receivers are named by whoever subscribes; lookups of
their hosts that hang (about 5 s each, times attempts and name servers, where DNS does not answer)
would fill that pool and hold the peer calls. Here a lookup runs on the resolver's own 2 threads
and is waited for at most the attempt's timeout; there is one lookup per host at a time however
many deliveries wait for it, an answer is kept CACHE_FOR seconds and a failure FAILED_FOR. While
a name's next lookup is under way its last answer still serves, so a receiver whose name resolved
once is not held by lookups of others that hang.

The lookup is the system's own (`getaddrinfo`: /etc/hosts, resolv.conf, nsswitch), the same as
every other call's. Not gevent's c-ares resolver, though its wheel has it and it needs no thread:
it reads /etc/hosts and resolv.conf itself, not through nsswitch, and gevent's documentation lists
where its answers differ from the system's; a receiver's name would then resolve otherwise than
the same name given to the peers' calls or to curl on the same machine.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import monkey
from gevent.threadpool import ThreadPool

# (family, type, proto, canonname, sockaddr), as getaddrinfo gives them
Address = tuple[Any, ...]
Lookup = Callable[[str, int], list[Address]]

LOOKUP_THREADS = 2
CACHE_FOR = 30.0  # seconds an answer is used; a fixed TTL (getaddrinfo does not tell the record's)
FAILED_FOR = 5.0  # seconds a failed lookup stands before the next one (the first retry comes after 5 s)
MAX_HOSTS = 1024  # names remembered at once; the expired ones are forgotten first

# The socket module's own getaddrinfo, even when gevent has patched it: on one of our threads it
# blocks only that thread, where gevent's would hand the lookup to the hub's pool again.
_system_getaddrinfo = monkey.get_original("socket", "getaddrinfo")


class LookupFailed(OSError):
    """No address for the host in time, or none at all: the attempt fails and is retried later."""


def system_lookup(host: str, port: int) -> list[Address]:
    return _system_getaddrinfo(host, port, 0, socket.SOCK_STREAM)


@dataclass
class _Host:
    lookup: Future | _GreenletFuture  # the latest; its result: (ended_at, addresses, error)
    previous: list[Address] | None  # the answer before it, used while it is under way


class HostResolver:
    """resolve(host, port): the addresses to connect to, within the timeout or LookupFailed."""

    def __init__(
        self, *, timeout: float, lookup: Lookup = system_lookup, threads: int = LOOKUP_THREADS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.lookup = lookup  # runs on the pool's threads: it must touch no gevent object
        self.threads = threads
        self.clock = clock
        self._hosts: dict[tuple[str, int], _Host] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | _NativeThreads | None = None

    def resolve(self, host: str, port: int, *, timeout: float | None = None) -> list[Address]:
        literal = literal_address(host, port)
        if literal is not None:
            return literal
        entry = self._entry(host, port)
        if entry.previous is not None and not entry.lookup.done():
            return entry.previous  # a name that answered before keeps its address while DNS is slow
        wait = self.timeout if timeout is None else timeout
        try:
            _, addresses, error = entry.lookup.result(timeout=max(wait, 0.0))
        except FutureTimeout:
            raise LookupFailed(f"no address for {host} within {wait:g} s") from None
        if error is not None:
            raise LookupFailed(f"no address for {host}: {error}") from error
        return addresses

    def _entry(self, host: str, port: int) -> _Host:
        """The host's lookup under way or answered lately, or a new one."""
        key, now = (host.lower(), port), self.clock()
        with self._lock:
            entry = self._hosts.get(key)
            if entry is None or _expired(entry.lookup, now):
                if len(self._hosts) >= MAX_HOSTS:
                    self._forget_expired(now)
                previous = None
                if entry is not None:
                    _, addresses, error = entry.lookup.result()
                    previous = addresses if error is None else None  # a failure is not kept over
                entry = _Host(self._executor().submit(self._timed_lookup, host, port), previous)
                self._hosts[key] = entry
            return entry

    def _timed_lookup(self, host: str, port: int) -> tuple[float, list[Address], Exception | None]:
        """On a pool thread. Never raises: a failure is an answer too, kept FAILED_FOR seconds."""
        try:
            addresses = self.lookup(host, port)
            error = None if addresses else LookupFailed("no address")
        except Exception as exc:  # gaierror, and UnicodeError for a name IDNA cannot encode
            addresses, error = [], exc
        return self.clock(), addresses, error

    def _forget_expired(self, now: float) -> None:
        for key in [key for key, entry in self._hosts.items() if _expired(entry.lookup, now)]:
            del self._hosts[key]
        while len(self._hosts) >= MAX_HOSTS:  # all recent: the oldest entries go
            del self._hosts[next(iter(self._hosts))]

    def _executor(self) -> ThreadPoolExecutor | _NativeThreads:
        # Made at the first lookup, in the process and (under gevent) the hub that deliver.
        if self._pool is None:
            if monkey.is_module_patched("threading"):
                self._pool = _NativeThreads(self.threads)
            else:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="webhook-lookup")
        return self._pool


class _NativeThreads:
    """Under gevent, where threading makes greenlets: gevent's pool of OS threads, submitted to
    without waiting (its `spawn` waits for a free thread, `apply_async` queues in a greenlet)."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPool(threads)

    def submit(self, fn: Callable[..., Any], *args: Any) -> _GreenletFuture:
        return _GreenletFuture(self._pool.apply_async(fn, args))


class _GreenletFuture:
    """The part of a Future the resolver uses, over the greenlet that waits for a pool thread."""

    def __init__(self, greenlet: gevent.Greenlet) -> None:
        self._greenlet = greenlet

    def done(self) -> bool:
        return self._greenlet.ready()

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._greenlet.get(timeout=timeout)
        except gevent.Timeout:
            raise FutureTimeout from None


def _expired(lookup: Future | _GreenletFuture, now: float) -> bool:
    if not lookup.done():
        return False
    ended_at, _, error = lookup.result()
    return now - ended_at >= (FAILED_FOR if error is not None else CACHE_FOR)


def literal_address(host: str, port: int) -> list[Address] | None:
    """An IP address needs no lookup."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if ip.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(ip), port))]
    if ip.scope_id:  # fe80::1%eth0: getaddrinfo turns the interface into its index
        return None
    return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(ip), port, 0, 0))]
