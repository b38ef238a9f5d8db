"""/api/v1/incidents: create, list, analytics, read and update incidents."""

from __future__ import annotations

from typing import Any

from flask import current_app, url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from incident_app import schemas
from incident_app.repository.analytics import AnalyticsFilters
from incident_app.repository.incidents import ListFilters
from incident_app.service import IncidentService

blp = Blueprint(
    "incidents", __name__, url_prefix="/api/v1/incidents",
    description="Incidents from creation to resolution: create, list, read, acknowledge, resolve, annotate.",
)


def incidents_service() -> IncidentService:
    return current_app.extensions["incident_service"]


@blp.route("")
class Incidents(MethodView):
    @blp.arguments(schemas.IncidentListQuerySchema, location="query")
    @blp.response(200, schemas.IncidentPageSchema)
    def get(self, query: dict[str, Any]):
        """List incidents, newest first

        Filter by `status`, `severity` and `service` (exact match); page with `limit` and `offset`.
        `total` counts every incident that matches the filters.
        """
        filters = ListFilters(status=query.get("status"), severity=query.get("severity"), service=query.get("service"))
        return incidents_service().list_incidents(filters, limit=query["limit"], offset=query["offset"])

    @blp.arguments(schemas.IncidentCreateSchema)
    @blp.response(201, schemas.IncidentSchema, description="The incident, with its linked alerts.")
    def post(self, body: dict[str, Any]):
        """Open an incident

        Stores the incident as `open`, asks the On-Call Service who is on call for `service` and
        assigns them, then notifies through the Notification Service. A peer that is down or slow
        never fails the creation: the incident is then unassigned, or its notification counted failed.
        """
        incident = incidents_service().open_incident(**body)
        location = url_for("incidents.Incident", incident_id=incident["incident_id"])
        return incident, 201, {"Location": location}


@blp.route("/analytics")
class Analytics(MethodView):
    @blp.arguments(schemas.AnalyticsQuerySchema, location="query")
    @blp.response(200, schemas.AnalyticsSchema)
    def get(self, query: dict[str, Any]):
        """Incident analytics

        Counts, MTTA/MTTR averages and percentiles (linear interpolation, as PostgreSQL's
        `percentile_cont`), by severity, status and service. MTTA covers every incident with an
        `acknowledged_at`, MTTR every incident with a `resolved_at`. Seconds; null where there is no data.
        """
        return incidents_service().analytics(AnalyticsFilters(**query))


@blp.route("/<string:incident_id>")
class Incident(MethodView):
    @blp.response(200, schemas.IncidentSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, incident_id: str):
        """Read an incident, with its linked alerts"""
        return incidents_service().get_incident(incident_id)

    @blp.arguments(schemas.IncidentUpdateSchema)
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
