"""The feed's event as every transport sends it (contract 7, "The event"); webhooks reuse it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from incident_app.documents import rfc3339, summary_json
from incident_app.feed.cursor import Cursor


def event_document(event: Mapping[str, Any], incident: Mapping[str, Any]) -> dict[str, Any]:
    """`{"cursor", "type", "incident_id", "created_at", "actor", "details", "incident"}`: `event` is a
    timeline row with its `xact_id` and `id`, `incident` the incident's document (documents.incident_document)."""
    return {
        "cursor": str(Cursor(event["xact_id"], event["id"])),
        "type": event["type"],
        "incident_id": incident["incident_id"],
        "created_at": rfc3339(event["created_at"]),
        "actor": event["actor"],
        "details": event["details"],
        "incident": summary_json(incident),
    }


def websocket_message(document: Mapping[str, Any]) -> dict[str, Any]:
    """The platform's first version's message, which its web UI reads, plus `cursor` and `type`."""
    incident = document["incident"]
    return {
        "event": "incident_created" if document["type"] == "created" else "incident_updated",
        "data": {
            "incident_id": document["incident_id"], "status": incident["status"],
            "severity": incident["severity"], "service": incident["service"],
            "cursor": document["cursor"], "type": document["type"],
        },
    }
