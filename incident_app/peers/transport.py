"""What the peers' calls (http.py) and webhook deliveries (receivers.py) share over urllib3: pools
of keep-alive connections made one way, a request sent one way (no redirect, no retry), and a
reply read within a size and a deadline.

A reply is read as it arrives (read1), with the socket's wait shortened to the time left before
each read: a reply that trickles in a byte at a time ends at the deadline, not when it is complete.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote

import certifi
from urllib3 import BaseHTTPResponse, PoolManager, Timeout
from urllib3.util import Url, make_headers

READ_CHUNK = 16384


def connection_pools(*, hosts: int, per_host: int, ca_certs: str | None = None) -> PoolManager:
    """A pool per host, for up to `hosts` hosts (the least recently used one is closed beyond).

    A pool keeps up to `per_host` idle connections; a call that finds none free opens one more
    rather than wait (block=False), closed after it if the pool is full. No retries: the callers
    decide. TLS is checked against certifi's bundle, the trust requests gave these calls before.
    """
    return PoolManager(
        num_pools=hosts, maxsize=per_host, block=False, retries=False, ca_certs=ca_certs or certifi.where(),
    )


def auth_headers(target: Url) -> dict[str, str]:
    """user:password@ in a URL, sent as Basic authorization, as requests did."""
    return make_headers(basic_auth=unquote(target.auth)) if target.auth else {}


def send(
    pools: PoolManager, target: Url, method: str, uri: str, *, body: bytes | None, headers: dict[str, str],
    timeout: Timeout, decode_content: bool,
) -> BaseHTTPResponse:
    """The request sent to `target`'s host (`uri`: path and query), its reply's head read within
    `timeout`: no redirect followed (a 3xx is the answer), no retry, the body left for read_reply."""
    pool = pools.connection_from_host(target.host, target.port, target.scheme)
    return pool.urlopen(method, uri, body=body, headers=headers, retries=False, redirect=False, timeout=timeout,
                        preload_content=False, decode_content=decode_content)


def read_reply(response: BaseHTTPResponse, *, limit: int, deadline: float, decode_content: bool) -> bytes | None:
    """The reply's body, or None when it is longer than `limit` bytes or not all in by `deadline`
    (time.monotonic()). Only a reply read to its end leaves its connection for the next call."""
    body = bytearray()
    finished = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            _wait_at_most(response, left)
            chunk = response.read1(READ_CHUNK, decode_content=decode_content)
            if not chunk:
                finished = True
                return bytes(body)
            body += chunk
            if len(body) > limit:
                return None
    finally:
        if not finished:
            response.close()  # what is left unread must not be read as the next reply
        response.release_conn()


def _wait_at_most(response: BaseHTTPResponse, seconds: float) -> None:
    # urllib3 sets the socket's timeout again before the connection's next request.
    connection: Any = response.connection
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)
