"""Marshmallow schemas for every body, query string and response: they validate the input and
they are the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from incident_app import documents
from incident_app.documents import rfc3339
from incident_app.lifecycle import SEVERITIES, STATUSES

MAX_ALERT_IDS = 100
MAX_OFFSET = 2**63 - 1  # PostgreSQL's OFFSET is a bigint


class Text(fields.String):
    """A string the database can store: no NUL character, no lone surrogate. Optionally trimmed."""

    default_error_messages = {"unstorable": "Must not contain NUL or invalid Unicode characters."}

    def __init__(self, *args: Any, strip: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strip = strip

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise self.make_error("unstorable")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise self.make_error("unstorable") from None
        return text.strip() if self.strip else text


class Timestamp(fields.DateTime):
    """RFC 3339 with an explicit UTC offset; on output, always in UTC with microseconds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else rfc3339(value)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        # The ISO parser stops at a NUL and accepts what came before it.
        if isinstance(value, str) and "\x00" in value:
            raise ma.ValidationError(Text.default_error_messages["unstorable"])
        parsed = super()._deserialize(value, attr, data, **kwargs)
        if parsed.tzinfo is None:
            raise ma.ValidationError("Must include a UTC offset, for example 2026-11-26T10:00:00Z.")
        try:
            return parsed.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise ma.ValidationError("Out of range.") from None


def severity_field(*, description: str = "", **kwargs: Any) -> fields.String:
    metadata = {"example": "critical", "description": description or "critical, high, medium or low."}
    return fields.String(validate=validate.OneOf(SEVERITIES), metadata=metadata, **kwargs)


def status_field(*, description: str = "", **kwargs: Any) -> fields.String:
    metadata = {"example": "acknowledged", "description": description or "open, acknowledged or resolved."}
    return fields.String(validate=validate.OneOf(STATUSES), metadata=metadata, **kwargs)


def note_content_field(**kwargs: Any) -> Text:
    return Text(strip=True, validate=validate.Length(1, 10_000), metadata={"example": "rolled back the deploy"},
                **kwargs)


def author_field() -> Text:
    return Text(allow_none=True, strip=True, validate=validate.Length(max=255), metadata={"example": "bob"})


# ----------------------------------------------------------------------------- request bodies


class IncidentCreateSchema(ma.Schema):
    title = Text(
        required=True, strip=True, validate=validate.Length(1, 500),
        metadata={"description": "1–500 characters after trimming.", "example": "Payment API error rate above 5%"},
    )
    service = Text(
        required=True, strip=True, validate=validate.Length(1, 255),
        metadata={"description": "The owning service; also the team asked for an on-call engineer.",
                  "example": "payment-api"},
    )
    severity = severity_field(required=True)
    description = Text(allow_none=True, validate=validate.Length(max=20_000), metadata={"example": None})
    alert_ids = fields.List(
        fields.UUID(),
        load_default=list,
        metadata={"description": f"Up to {MAX_ALERT_IDS} distinct alert ids; duplicates are collapsed."},
    )

    dedup_key = Text(
        allow_none=True, strip=True, validate=validate.Length(1, 255),
        metadata={"description": "1–255 characters after trimming; null is the same as absent. While an "
                                 "unresolved incident has this key, the create is folded into it (200, "
                                 "`Incident-Grouped: true`) instead of opening another.",
                  "example": "payment-api/error-rate"},
    )

    @ma.validates("alert_ids")
    def _at_most_100_alerts(self, value: list, **_: Any) -> None:
        if len(set(value)) > MAX_ALERT_IDS:
            raise ma.ValidationError(f"At most {MAX_ALERT_IDS} distinct alert ids.")

    @ma.post_load
    def _collapse_duplicates(self, data: dict, **_: Any) -> dict:
        data["alert_ids"] = list(dict.fromkeys(data["alert_ids"]))
        if data.get("dedup_key", "") is None:
            del data["dedup_key"]
        return data


class IncidentUpdateSchema(ma.Schema):
    status = status_field(description="open → acknowledged → resolved; open → resolved too.")
    assigned_to = Text(
        allow_none=True, strip=True, validate=validate.Length(1, 255),
        metadata={"description": "An engineer identifier, or null to unassign.", "example": "alice@example.com"},
    )
    note = note_content_field()
    author = author_field()


class NoteCreateSchema(ma.Schema):
    content = note_content_field(required=True)
    author = author_field()


class AlertLinkSchema(ma.Schema):
    alert_ids = fields.List(
        fields.UUID(), required=True, validate=validate.Length(min=1),
        metadata={"description": f"Up to {MAX_ALERT_IDS} distinct alert ids; one already linked is left as it was."},
    )

    @ma.validates("alert_ids")
    def _at_most_100_alerts(self, value: list, **_: Any) -> None:
        if len(set(value)) > MAX_ALERT_IDS:
            raise ma.ValidationError(f"At most {MAX_ALERT_IDS} distinct alert ids.")


class IdempotencyHeaderSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    idempotency_key = Text(
        data_key="Idempotency-Key", validate=validate.Length(1, 255),
        metadata={"description": "Makes retries safe: the same key and body within 24 hours return the first "
                                 "incident (201, `Idempotent-Replayed: true`) without assigning or notifying "
                                 "again; another body → 422; while the first is in flight → 409."},
    )


# ----------------------------------------------------------------------------- query strings


class IncidentListQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    status = status_field()
    severity = severity_field()
    service = Text(validate=validate.Length(1, 255))
    dedup_key = Text(strip=True, validate=validate.Length(1, 255),
                     metadata={"description": "Exact match, after trimming; resolved incidents included."})
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_OFFSET))


class AnalyticsQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    service = Text(validate=validate.Length(1, 255))
    severity = severity_field()
    since = Timestamp(metadata={"description": "Inclusive lower bound on created_at (RFC 3339)."})
    until = Timestamp(metadata={"description": "Exclusive upper bound on created_at (RFC 3339)."})

    @ma.validates_schema
    def _window_in_order(self, data: dict, **_: Any) -> None:
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ma.ValidationError("since must not be after until.", "since")


# ----------------------------------------------------------------------------- responses


class NoteSchema(ma.Schema):
    id = fields.UUID(required=True)
    content = fields.String(required=True, metadata={"example": "rolled back the deploy"})
    author = fields.String(allow_none=True)
    created_at = fields.String(metadata={"format": "date-time"})


class LinkedAlertSchema(ma.Schema):
    alert_id = fields.UUID(required=True)
    linked_at = Timestamp(required=True)
    service = fields.String(metadata={"description": "Present when the platform's alerts table is reachable."})
    severity = fields.String()
    message = fields.String(allow_none=True)
    timestamp = Timestamp(allow_none=True)
    url = fields.String(
        required=True,
        metadata={"description": "The alert in the Alert Ingestion Service (ALERT_SERVICE_URL).",
                  "example": "http://alert-ingestion:8001/api/v1/alerts/3fa85f64-5717-4562-b3fc-2c963f66afa6"},
    )


def _document_field(declared: documents.Field) -> fields.Field:
    """The marshmallow field of a document field: required unless it may be null."""
    options: dict[str, Any] = {"metadata": dict(declared.metadata)}
    options["allow_none" if declared.nullable else "required"] = True
    return _FIELD_OF_KIND[declared.kind](**options)


_FIELD_OF_KIND: dict[str, Any] = {
    documents.UUID: fields.UUID,
    documents.TEXT: fields.String,
    documents.ENUM: fields.String,
    documents.INTEGER: fields.Integer,
    documents.TIMESTAMP: Timestamp,
    documents.SECONDS: fields.Float,
    documents.NOTES: lambda **options: fields.List(fields.Nested(NoteSchema), **options),
}

# A list item: the incident's fields as documents.FIELDS declares them, and nothing else.
IncidentSummarySchema = ma.Schema.from_dict(
    {declared.name: _document_field(declared) for declared in documents.FIELDS}, name="IncidentSummarySchema"
)


class IncidentSchema(IncidentSummarySchema):  # type: ignore[misc,valid-type]
    alerts = fields.List(fields.Nested(LinkedAlertSchema), required=True)
    alert_ids = fields.List(
        fields.UUID(), required=True,
        metadata={"description": "The linked alert ids alone, in the order of `alerts` "
                                 "(the platform's web UI reads them)."},
    )


class IncidentPageSchema(ma.Schema):
    """What a list answers. Its body is written by the store (documents.Page), from the same
    declaration as this schema: tests/test_documents.py holds the two to the same output."""

    incidents = fields.List(fields.Nested(IncidentSummarySchema), required=True)
    total = fields.Integer(required=True, metadata={"description": "How many incidents match the filters."})
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)


EVENT_TYPES = (
    "created", "assigned", "notified", "notification_failed", "acknowledged", "escalated", "reassigned",
    "note_added", "resolved", "alerts_linked", "alert_grouped", "severity_raised",
)


class EventSchema(ma.Schema):
    type = fields.String(required=True, metadata={"enum": list(EVENT_TYPES)})
    created_at = Timestamp(required=True)
    actor = fields.String(allow_none=True, metadata={"description": "Who did it: a PATCH's author, `system`, or null."})
    details = fields.Dict(required=True, metadata={"description": "What changed, by event type."})


class TimelineSchema(ma.Schema):
    incident_id = fields.String(required=True)
    events = fields.List(fields.Nested(EventSchema), required=True, metadata={"description": "Oldest first."})


def _percentiles() -> fields.Dict:
    return fields.Dict(keys=fields.String(), values=fields.Float(allow_none=True),
                       metadata={"example": {"p50": 42.0, "p90": 120.5, "p95": 300.0, "p99": 900.0}})


class SeverityBreakdownSchema(ma.Schema):
    count = fields.Integer()
    unresolved = fields.Integer()
    avg_mtta_seconds = fields.Float(allow_none=True)
    avg_mttr_seconds = fields.Float(allow_none=True)


class AnalyticsSchema(ma.Schema):
    total_incidents = fields.Integer()
    open_count = fields.Integer()
    acknowledged_count = fields.Integer()
    resolved_count = fields.Integer()
    avg_mtta_seconds = fields.Float(allow_none=True)
    avg_mttr_seconds = fields.Float(allow_none=True)
    mtta_percentiles = _percentiles()
    mttr_percentiles = _percentiles()
    by_severity = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_service = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_status = fields.Dict(keys=fields.String(), values=fields.Integer())
    severity_breakdown = fields.Dict(keys=fields.String(), values=fields.Nested(SeverityBreakdownSchema))
