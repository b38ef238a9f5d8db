"""The one definition of an incident document: its fields are the columns of `tables.incidents`, in
order, with the two durations derived from them. The marshmallow schemas (schemas.py), the fast
formatter below and the SQL that writes a page (repository/pages.py) are all made from FIELDS, so a
column added to the table (with its migration) is in every one of them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from incident_app.tables import UTCDateTime, incidents

# A field's kind says how it is formatted everywhere it is written.
UUID, TEXT, ENUM, INTEGER = "uuid", "text", "enum", "integer"
TIMESTAMP, NOTES, SECONDS = "timestamp", "notes", "seconds"

# Durations from creation, in seconds (null until the later time is set), placed after `updated_at`.
DERIVED_SECONDS = {"mtta_seconds": "acknowledged_at", "mttr_seconds": "resolved_at"}
_DERIVED_AFTER = "updated_at"


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    nullable: bool
    metadata: Mapping[str, Any] = field(default_factory=dict)
    since: str | None = None  # SECONDS only: the later time, counted from created_at


def _kind(column: sa.Column[Any]) -> str:
    type_ = column.type
    if isinstance(type_, UTCDateTime):
        return TIMESTAMP
    if isinstance(type_, sa.Enum):
        return ENUM
    if isinstance(type_, sa.Uuid):
        return UUID
    if isinstance(type_, sa.Integer):
        return INTEGER
    if isinstance(type_, sa.String):  # Text included
        return TEXT
    if isinstance(type_, sa.JSON) and column.name == "notes":
        return NOTES
    raise TypeError(f"incidents.{column.name}: no document form for {type_!r}; declare one in documents.py")


def _fields() -> tuple[Field, ...]:
    declared: list[Field] = []
    for column in incidents.columns:
        metadata = dict(column.info)
        if isinstance(column.type, sa.Enum):
            metadata.setdefault("enum", list(column.type.enums))
        declared.append(Field(column.name, _kind(column), bool(column.nullable), metadata))
        if column.name == _DERIVED_AFTER:
            declared += [Field(name, SECONDS, True, since=later) for name, later in DERIVED_SECONDS.items()]
    return tuple(declared)


FIELDS: tuple[Field, ...] = _fields()


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def incident_document(row: Any, alerts: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """An incident's fields as Python values (a row of `incidents`), with its alerts (and their ids
    alone) when given: the full incident document, IncidentSchema's."""
    mapping = row._mapping
    created_at = mapping["created_at"]
    document = {
        field.name: mapping[field.name] if field.since is None else _seconds(mapping[field.since], created_at)
        for field in FIELDS
    }
    if alerts is not None:
        document["alerts"] = list(alerts)
        document["alert_ids"] = [alert["alert_id"] for alert in alerts]
    return document


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return (later - earlier).total_seconds() if later is not None else None


_TO_JSON = {TIMESTAMP: rfc3339, UUID: str}
_FORMATS = tuple((f.name, _TO_JSON.get(f.kind)) for f in FIELDS)


def summary_json(document: Mapping[str, Any]) -> dict[str, Any]:
    """A list item as JSON values, straight from FIELDS' kinds. Pages carry up to 1,000 incidents:
    this is ten times faster than marshmallow's field-by-field dump (1 ms of a 50-row page's 2.5 ms);
    tests/test_documents.py holds both to the same output."""
    item = {}
    for name, fmt in _FORMATS:
        value = document[name]
        item[name] = value if fmt is None or value is None else fmt(value)
    return item


# A linked alert's values that are not JSON as they are (LinkedAlertSchema's UUID and times).
_ALERT_TO_JSON = {"alert_id": str, "linked_at": rfc3339, "timestamp": rfc3339}


def incident_json(document: Mapping[str, Any]) -> dict[str, Any]:
    """The full incident document (`incident_document` with alerts) as JSON values, as IncidentSchema
    dumps it, straight from FIELDS' kinds like `summary_json`. A storm's incident carries hundreds of
    alerts, which marshmallow dumps field by field (3.7 ms at 225 alerts); tests/test_documents.py holds
    both to the same output."""
    body = summary_json(document)
    body["alerts"] = [_alert_json(alert) for alert in document["alerts"]]
    body["alert_ids"] = [str(alert_id) for alert_id in document["alert_ids"]]
    return body


def _alert_json(alert: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value if value is None else _ALERT_TO_JSON.get(name, str)(value) for name, value in alert.items()}


@dataclass(frozen=True)
class AlertsJson:
    """An incident's linked alerts as the JSON texts of its document's `alerts` and `alert_ids`.

    PostgreSQL writes them for a grouped create (repository/incidents.linked_alerts_json): a storm's
    incident has hundreds of alerts, and reading them into Python and formatting them one by one
    was more than half of a grouped create's time in the worker at 330 alerts."""

    alerts: str
    alert_ids: str

    @classmethod
    def of(cls, alerts: Sequence[Mapping[str, Any]]) -> AlertsJson:
        """The texts of alerts read as Python values (each with its `url`), as incident_json writes them."""
        return cls(_compact([_alert_json(alert) for alert in alerts]),
                   _compact([str(alert["alert_id"]) for alert in alerts]))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def incident_json_text(document: Mapping[str, Any], alerts: AlertsJson | None = None) -> str:
    """The full incident document as JSON text: `incident_json`'s, or, with `alerts`, the document's
    other fields followed by those two texts as they are (the same document, the alerts last as there)."""
    if alerts is None:
        return _compact(incident_json(document))
    head = _compact(summary_json(document))
    return f'{head[:-1]},"alerts":{alerts.alerts},"alert_ids":{alerts.alert_ids}}}'


@dataclass(frozen=True)
class Page:
    """A list's answer, whichever store made it: the JSON body of IncidentPageSchema's document."""

    body: str
