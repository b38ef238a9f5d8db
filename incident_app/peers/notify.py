"""Notification Service client."""

from __future__ import annotations

from typing import Any

from incident_app.peers.http import PeerClient

CHANNEL = "mock"


class NotificationClient:
    def __init__(self, peer: PeerClient) -> None:
        self.peer = peer

    def send(self, notification: dict[str, Any]) -> bool:
        """True when the Notification Service accepted it (any 2xx)."""
        reply = self.peer.call("POST", "/api/v1/notify", json=notification)
        return reply is not None and 200 <= reply.status < 300
