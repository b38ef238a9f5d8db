"""The one outbound HTTP path: a pooled session per process and calls bounded in time and size."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1 << 20


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or None when the body was not JSON


def pooled_session(connections: int = 50) -> requests.Session:
    session = requests.Session()
    # No retries here: the caller decides; keep-alive connections are reused across requests.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=connections, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False
    return session


class PeerClient:
    def __init__(self, session: requests.Session, base_url: str, timeout: float) -> None:
        self.session = session
        self.base_url = base_url
        self.timeout = timeout

    def call(self, method: str, path: str, **kwargs: Any) -> Reply | None:
        """One call, finished within about `timeout` seconds; None when no answer came back."""
        url = f"{self.base_url}{path}"
        deadline = time.monotonic() + self.timeout
        try:
            with self.session.request(method, url, timeout=self.timeout, stream=True, **kwargs) as response:
                body = bytearray()
                # Read in chunks against the deadline, so a peer that trickles bytes cannot hold us.
                for chunk in response.iter_content(16384):
                    body += chunk
                    if len(body) > MAX_REPLY_BYTES or time.monotonic() > deadline:
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
