"""The feed's event as every transport sends it (contract 7, "The event"); webhooks reuse it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from incident_app.documents import rfc3339
from incident_app.feed.cursor import Cursor


def event_head(event: Mapping[str, Any], incident_id: str) -> dict[str, Any]:
    """The event's fields before its `incident`: `{"cursor", "type", "incident_id", "created_at",
    "actor", "details"}`, `event` a timeline row with its `xact_id` and `id`."""
    return {
        "cursor": str(Cursor(event["xact_id"], event["id"])),
        "type": event["type"],
        "incident_id": incident_id,
        "created_at": rfc3339(event["created_at"]),
        "actor": event["actor"],
        "details": event["details"],
    }


def event_text(head: Mapping[str, Any], incident: str) -> str:
    """The event's JSON text: `head` (event_head) and `incident`, the JSON text of the incident as a
    list item, as the database keeps it (repository/items.py), not decoded and encoded again."""
    return f'{json.dumps(head)[:-1]}, "incident": {incident}}}'


def websocket_message(document: Mapping[str, Any]) -> dict[str, Any]:
    """The platform's first version's message, which its web UI reads, plus `cursor` and `type`:
    `document` is the event decoded."""
    incident = document["incident"]
    return {
        "event": "incident_created" if document["type"] == "created" else "incident_updated",
        "data": {
            "incident_id": document["incident_id"], "status": incident["status"],
            "severity": incident["severity"], "service": incident["service"],
            "cursor": document["cursor"], "type": document["type"],
        },
    }
