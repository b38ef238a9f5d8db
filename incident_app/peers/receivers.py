"""The HTTP client of webhook deliveries: a POST, its reply's status, bounded in time and size.

urllib3 directly, as the On-Call and Notification calls (peers/http.py), with the same pools and
the same bounded reading of a reply (transport.py): requests' request preparation was most of the
sender's CPU (README, *Webhooks under load*). One pool of keep-alive connections per receiving
host, at most HOSTS pools. A connection finds its address through the sender's HostResolver (peers/resolver.py), never
the socket module's lookup, and keeps the host's name for the Host header and for TLS (SNI and the
certificate's check), since urllib3 sends and checks the name it was given, not the address.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Mapping
from typing import Any

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NameResolutionError, NewConnectionError
from urllib3.util import parse_url

from incident_app.peers.resolver import Address, HostResolver, LookupFailed
from incident_app.peers.transport import auth_headers, connection_pools, read_reply, send

HOSTS = 64  # receiving hosts with a pool at once; the least recently used one is closed beyond
HEADERS = {"User-Agent": "incident-management-service"}


class _ResolvedConnection:
    """Connects to what `resolver` answers for the host, within the connection's timeout."""

    def __init__(self, *args: Any, resolver: HostResolver, **kwargs: Any) -> None:
        self.resolver = resolver
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        # The attempt's Timeout(total=…) gives the connection its whole budget: the lookup and the
        # connect share it, and urllib3 gives the reply what they leave.
        budget = self.timeout if isinstance(self.timeout, int | float) else self.resolver.timeout
        deadline = time.monotonic() + budget
        try:
            addresses = self.resolver.resolve(self._dns_host, self.port, timeout=budget)
        except LookupFailed as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        try:
            return _connect(addresses, deadline, self.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect: {exc}") from exc  # type: ignore[arg-type]


def _connect(addresses: list[Address], deadline: float, options: Any) -> socket.socket:
    """Each address in turn, as socket.create_connection does, without looking the name up again."""
    error: OSError = OSError("no address")
    for family, kind, proto, _, sockaddr in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock = socket.socket(family, kind, proto)
        try:
            for option in options or ():
                sock.setsockopt(*option)
            sock.settimeout(left)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _Connection(_ResolvedConnection, HTTPConnection):
    pass


class _TLSConnection(_ResolvedConnection, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class ReceiverClient:
    """post(url, body, headers) → the receiver's status, or None when no answer came in time.

    No redirect is followed (a 3xx is its status), no retry (the sender retries on its backoff),
    the reply is read up to `max_reply_bytes` and until the attempt's time is up: after that its
    status stands and the connection is dropped rather than reused.
    """

    def __init__(
        self, *, timeout: float, max_reply_bytes: int, connections_per_host: int,
        resolver: HostResolver | None = None, ca_certs: str | None = None,
    ) -> None:
        self.timeout = timeout
        self._timeout = Timeout(total=timeout)  # lookup, connect and reply together
        self.max_reply_bytes = max_reply_bytes
        self.resolver = resolver or HostResolver(timeout=timeout)
        self.pools = connection_pools(hosts=HOSTS, per_host=connections_per_host, ca_certs=ca_certs)
        # The resolver reaches each connection through its pool (urllib3 passes a pool's unknown
        # arguments on to its connections); pool arguments given to PoolManager would join the key.
        self.pools.pool_classes_by_scheme = {
            "http": functools.partial(_Pool, resolver=self.resolver),
            "https": functools.partial(_TLSPool, resolver=self.resolver),
        }

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int | None:
        deadline = time.monotonic() + self.timeout
        try:
            target = parse_url(url)
            sent = {**HEADERS, **headers, **auth_headers(target)}
            response = send(self.pools, target, "POST", target.request_uri, body=body, headers=sent,
                            timeout=self._timeout, decode_content=False)
        except (HTTPError, OSError):
            return None
        # Read so that the connection can be reused; a reply too long or too slow is dropped: the
        # status came, and a reply cut short does not change it.
        with contextlib.suppress(HTTPError, OSError):
            read_reply(response, limit=self.max_reply_bytes, deadline=deadline, decode_content=False)
        return response.status
