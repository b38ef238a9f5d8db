"""On-Call Service client: who is on call for a team. Nobody on call is an answer, not an error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from incident_app.peers.http import PeerClient


@dataclass(frozen=True)
class OnCall:
    primary: str | None = None
    secondary: str | None = None


NOBODY_ON_CALL = OnCall()


def _engineer(entry: Any) -> str | None:
    """An engineer's identifier: the email, else the name (at most 255 characters)."""
    if not isinstance(entry, dict):
        return None
    for key in ("email", "name"):
        value = entry.get(key)
        if isinstance(value, str) and value.strip() and "\x00" not in value:
            return value.strip()[:255]
    return None


class OnCallClient:
    def __init__(self, peer: PeerClient) -> None:
        self.peer = peer

    def current(self, team: str) -> OnCall:
        reply = self.peer.call("GET", "/api/v1/oncall/current", params={"team": team})
        if reply is None or reply.status != 200 or not isinstance(reply.body, dict):
            return NOBODY_ON_CALL
        return OnCall(primary=_engineer(reply.body.get("primary")), secondary=_engineer(reply.body.get("secondary")))
