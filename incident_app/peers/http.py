"""The outbound HTTP path of the On-Call and Notification calls: pooled keep-alive connections per
process, calls bounded in time and size. (Webhook deliveries have a client of their own: receivers.py.)"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1 << 20
HEADERS = {"User-Agent": "incident-management-service", "Accept": "application/json"}


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or None when the body was not JSON


def pooled_transport(connections: int = 50, hosts: int = 4) -> HTTPAdapter:
    """requests' transport, its keep-alive connections reused across calls (a pool per host, for up
    to `hosts` hosts at once); no retries (the caller decides)."""
    return HTTPAdapter(pool_connections=hosts, pool_maxsize=connections, max_retries=0)


class PeerClient:
    """Calls to one peer, each a request prepared by requests and sent by its transport adapter.

    Not through a requests.Session: its cookies, redirects, hooks and environment settings are of
    no use between services, and cost 0.13 ms of CPU a call (0.60 ms against 0.47; two calls per create).
    """

    def __init__(
        self, transport: HTTPAdapter, base_url: str, timeout: float, *, max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.transport = transport
        self.base_url = base_url
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes

    def call(self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any) -> Reply | None:
        """One call, finished within about `timeout` seconds; None when no answer came back.
        `headers` join the usual ones; `kwargs` as requests.Request takes them (params, json, data)."""
        url = f"{self.base_url}{path}"
        deadline = time.monotonic() + self.timeout
        try:
            request = requests.Request(method, url, headers={**HEADERS, **(headers or {})}, **kwargs).prepare()
            with self.transport.send(request, stream=True, timeout=self.timeout) as response:
                body = bytearray()
                # Read in chunks against the deadline, so a peer that trickles bytes cannot hold us.
                for chunk in response.iter_content(16384):
                    body += chunk
                    if len(body) > self.max_reply_bytes or time.monotonic() > deadline:
                        log.warning("peer reply too large or too slow", extra={"peer_url": url})
                        return None
                return Reply(response.status_code, _json_or_none(bytes(body)))
        except requests.RequestException as exc:
            log.warning("peer call failed: %s", exc.__class__.__name__, extra={"peer_url": url})
            return None


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
