"""/api/v1/incidents: create, list, analytics, read, update and annotate incidents."""

from __future__ import annotations

from typing import Any

from flask import current_app, url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from incident_app import documents, schemas
from incident_app.api.parsing import StrictJsonParser
from incident_app.repository.analytics import AnalyticsFilters
from incident_app.repository.pages import ListFilters
from incident_app.service import IncidentService

blp = Blueprint(
    "incidents", __name__, url_prefix="/api/v1/incidents",
    description="Incidents from creation to resolution: create, list, read, acknowledge, resolve, annotate.",
)
blp.ARGUMENTS_PARSER = StrictJsonParser()  # before the decorators below, which take it at definition


def incidents_service() -> IncidentService:
    return current_app.extensions["incident_service"]


@blp.route("")
class Incidents(MethodView):
    @blp.arguments(schemas.IncidentListQuerySchema(), location="query")
    @blp.response(200, schemas.IncidentPageSchema)
    def get(self, query: dict[str, Any]):
        """List incidents, newest first

        Filter by `status`, `severity`, `service` and `dedup_key` (exact match); page with `limit` and `offset`.
        `total` counts every incident that matches the filters.
        """
        filters = ListFilters(**{name: query.get(name) for name in ("status", "severity", "service", "dedup_key")})
        page = incidents_service().list_incidents(filters, limit=query["limit"], offset=query["offset"])
        # The store wrote the body from the declaration IncidentPageSchema is made of: sent as it is.
        return current_app.response_class(page.body, mimetype="application/json")

    @blp.arguments(schemas.IncidentCreateSchema())
    @blp.arguments(schemas.IdempotencyHeaderSchema(), location="headers")
    @blp.response(
        201, schemas.IncidentSchema, description="The incident, with its linked alerts.",
        headers={
            "Location": {"description": "The incident's URL.", "schema": {"type": "string"}},
            "Idempotent-Replayed": {
                "description": "`true` when this answers a retry with an Idempotency-Key already used.",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
    )
    @blp.alt_response(
        200, schema=schemas.IncidentSchema, success=True,
        description="Grouped: an unresolved incident has this `dedup_key`, and the create was folded into it "
                    "(its alerts linked, `grouped_count` + 1, its severity raised if this one is more severe). "
                    "Nobody is paged, unless the severity rose.",
        headers={
            "Location": {"description": "The incident's URL.", "schema": {"type": "string"}},
            "Incident-Grouped": {"description": "`true`: no incident was opened.",
                                 "schema": {"type": "string", "enum": ["true"]}},
            "Idempotent-Replayed": {
                "description": "`true` when this answers a retry with an Idempotency-Key already used.",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
    )
    @blp.alt_response(409, response="CONFLICT", description="A request with this Idempotency-Key is in flight.")
    def post(self, body: dict[str, Any], headers: dict[str, Any]):
        """Open an incident, or group the alert into the one of its `dedup_key`

        Stores the incident as `open` together with its notification, then asks the On-Call Service
        who is on call for `service`, assigns them and sends the notification to them (to the service
        name when nobody is on call). A notification the Notification Service does not accept is
        retried in the background. A peer that is down or slow never fails the creation.

        With a `dedup_key` that an unresolved incident has, no incident is opened: the body's
        `alert_ids` are linked to that one, an `alert_grouped` event records the request, and the
        answer is 200 with `Incident-Grouped: true`. A more severe request raises the incident's
        severity (`severity_raised`) and notifies its assignee again. Of concurrent creates with one
        key exactly one opens the incident (201); the others are grouped into it (200).
        """
        created = incidents_service().create_incident(idempotency_key=headers.get("idempotency_key"), **body)
        location = url_for("incidents.Incident", incident_id=created.incident["incident_id"])
        response_headers = {"Location": location}
        if created.grouped:
            response_headers["Incident-Grouped"] = "true"
        if created.replayed:
            response_headers["Idempotent-Replayed"] = "true"
        # The body from the declaration IncidentSchema is made of (documents.incident_json), sent as it is.
        body = documents.incident_json_text(created.incident, created.alerts)
        return current_app.response_class(body, status=200 if created.grouped else 201, headers=response_headers,
                                          mimetype="application/json")


@blp.route("/analytics")
class Analytics(MethodView):
    @blp.arguments(schemas.AnalyticsQuerySchema(), location="query")
    @blp.response(200, schemas.AnalyticsSchema)
    def get(self, query: dict[str, Any]):
        """Incident analytics

        Counts, MTTA/MTTR averages and percentiles (linear interpolation, as PostgreSQL's
        `percentile_cont`), by severity, status and service. MTTA covers every incident with an
        `acknowledged_at`, MTTR every incident with a `resolved_at`. Seconds; null where there is no data.
        A worker computes at most a quarter of its database pool's worth of analytics at once; a request
        that gets no turn within 20 s answers 503.
        """
        return incidents_service().analytics(AnalyticsFilters(**query))


@blp.route("/<string:incident_id>")
class Incident(MethodView):
    @blp.response(200, schemas.IncidentSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, incident_id: str):
        """Read an incident, with its linked alerts"""
        return incidents_service().get_incident(incident_id)

    @blp.arguments(schemas.IncidentUpdateSchema())
    @blp.response(200, schemas.IncidentSchema)
    @blp.alt_response(400, response="BAD_REQUEST")
    @blp.alt_response(404, response="NOT_FOUND")
    def patch(self, body: dict[str, Any], incident_id: str):
        """Acknowledge, resolve, reassign or annotate an incident

        `open → acknowledged`, `open → resolved` and `acknowledged → resolved` are allowed; asking for
        the status the incident already has changes nothing and answers 200, so retries are safe.
        Any other transition is a 400 naming both statuses. All fields apply together or none does.
        """
        return incidents_service().update_incident(incident_id, **body).incident


@blp.route("/<string:incident_id>/notes")
class IncidentNotes(MethodView):
    @blp.arguments(schemas.NoteCreateSchema())
    @blp.response(201, schemas.NoteSchema, description="The note, as the incident's `notes` now hold it.")
    @blp.alt_response(404, response="NOT_FOUND")
    def post(self, body: dict[str, Any], incident_id: str):
        """Add a note to an incident

        Appends the note exactly as a PATCH with `note` and `author` does (the same `note_added`
        event; concurrent appends are all kept). This is how the platform's web UI adds notes.
        """
        return incidents_service().add_note(incident_id, **body)


@blp.route("/<string:incident_id>/events")
class Timeline(MethodView):
    @blp.response(200, schemas.TimelineSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, incident_id: str):
        """The incident's timeline, oldest first

        `created`, `assigned`, `notified`, `notification_failed`, `acknowledged`, `escalated`,
        `reassigned`, `note_added`, `resolved`, `alerts_linked`, `alert_grouped`, `severity_raised`;
        each written in the transaction of the change it records.
        """
        return incidents_service().timeline(incident_id)


@blp.route("/<string:incident_id>/alerts")
class IncidentAlerts(MethodView):
    @blp.arguments(schemas.AlertLinkSchema())
    @blp.response(200, schemas.IncidentSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def post(self, body: dict[str, Any], incident_id: str):
        """Link more alerts to an incident

        Linking an alert that is already linked changes nothing, so the call is safe to retry.
        """
        return incidents_service().link_alerts(incident_id, body["alert_ids"])
