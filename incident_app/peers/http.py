"""The outbound HTTP path of the On-Call and Notification calls: urllib3's pooled keep-alive
connections per process, each call bounded in time and size. (Webhook deliveries have a client of
their own, receivers.py, over the same pools and reading: transport.py.)

urllib3 directly, without requests: its request preparation (URL, headers, body, hooks) was half a
call's CPU, and these calls need none of it. No redirect is followed (a 3xx is the peer's answer,
as any other unhelpful one) and no call is retried (a create goes on without the answer; the
outbox retries a notification on its own backoff).

The peers are the platform's own services, named by the deployment's settings: their names are
looked up by the system as any other call's, not on the webhook sender's threads (resolver.py),
which are there for hosts that whoever subscribes chooses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from urllib3 import PoolManager, Timeout
from urllib3.exceptions import HTTPError
from urllib3.util import parse_url

from incident_app.peers.transport import auth_headers, connection_pools, read_reply, send

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1 << 20
HEADERS = {"User-Agent": "incident-management-service", "Accept": "application/json"}
JSON_BODY = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or None when the body was not JSON


def peer_pools(connections: int = 50, hosts: int = 4) -> PoolManager:
    """Keep-alive connections reused across calls: up to `connections` kept per host, `hosts` hosts."""
    return connection_pools(hosts=hosts, per_host=connections)


class PeerClient:
    """Calls to one peer at `base_url` (its path, if any, prefixes every call's)."""

    def __init__(
        self, pools: PoolManager, base_url: str, timeout: float, *, max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.pools = pools
        self.base_url = base_url
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self._target = parse_url(base_url)
        self._prefix = (self._target.path or "").rstrip("/")
        self._headers = {**HEADERS, **auth_headers(self._target)}
        self._timeout = Timeout(total=timeout)  # connect and the reply's head together; the body: read_reply

    def call(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply | None:
        """One call, finished within about `timeout` seconds; None when no whole answer came back.
        `params` become the query string, `json` the body; `headers` join the usual ones."""
        deadline = time.monotonic() + self.timeout
        uri = f"{self._prefix}{path}?{urlencode(params)}" if params else f"{self._prefix}{path}"
        try:
            sent = {**self._headers, **(headers or {})}
            body = None
            if json is not None:
                body = _encode(json)
                sent.update(JSON_BODY)
            response = send(self.pools, self._target, method, uri, body=body, headers=sent, timeout=self._timeout,
                            decode_content=True)
            reply = read_reply(response, limit=self.max_reply_bytes, deadline=deadline, decode_content=True)
        except (HTTPError, OSError, ValueError) as exc:  # ValueError: a body JSON cannot encode
            log.warning("peer call failed: %s", exc.__class__.__name__, extra={"peer_url": self.base_url + path})
            return None
        if reply is None:
            log.warning("peer reply too large or too slow", extra={"peer_url": self.base_url + path})
            return None
        return Reply(response.status, _json_or_none(reply))


def _encode(document: Any) -> bytes:
    return json.dumps(document, allow_nan=False).encode()


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
