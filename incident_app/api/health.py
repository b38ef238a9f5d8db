"""Probes for the load balancer and the orchestrator. Each answers within about two seconds, even
with the database hung: they ask through the bounded probe path (probes.py), never the request pool."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import marshmallow as ma
import psutil
import sqlalchemy as sa
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields

from incident_app.probes import ProbeDatabase, ProbeTimeout

blp = Blueprint("health", __name__, url_prefix="/health", description="Liveness, readiness and health probes.")

_STARTED = time.monotonic()
DISK_PATH = "/"
_DATABASE_ERRORS = (sa.exc.SQLAlchemyError, ProbeTimeout)


class LiveSchema(ma.Schema):
    status = fields.String(required=True, metadata={"example": "alive"})


class ReadySchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["ready", "not ready"], "example": "ready"})
    reason = fields.String(metadata={"description": "Why the service is not ready (503 only).",
                                     "example": "database unavailable: OperationalError"})


class DatabaseCheckSchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["healthy", "unhealthy"]})
    latency_ms = fields.Float(allow_none=True, metadata={"description": "Connect and `SELECT 1`; null when down."})


class UsageCheckSchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["healthy", "degraded"]})
    percent = fields.Float(required=True, metadata={"description": "Percent used."})


class ChecksSchema(ma.Schema):
    database = fields.Nested(DatabaseCheckSchema, required=True)
    memory = fields.Nested(UsageCheckSchema, required=True)
    disk = fields.Nested(UsageCheckSchema, required=True)


class HealthSchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["healthy", "degraded", "unhealthy"]})
    service = fields.String(required=True, metadata={"example": "incident-management"})
    version = fields.String(required=True, metadata={"example": "1.0.0"})
    environment = fields.String(required=True, metadata={"example": "production"})
    timestamp = fields.String(required=True, metadata={"format": "date-time"})
    uptime_seconds = fields.Float(required=True)
    checks = fields.Nested(ChecksSchema, required=True)


_HEALTHY_EXAMPLE = {
    "status": "healthy", "service": "incident-management", "version": "1.0.0", "environment": "production",
    "timestamp": "2026-11-26T10:00:00.123456+00:00", "uptime_seconds": 3600.5,
    "checks": {"database": {"status": "healthy", "latency_ms": 1.84},
               "memory": {"status": "healthy", "percent": 41.2}, "disk": {"status": "healthy", "percent": 63.0}},
}
_UNHEALTHY_EXAMPLE = {
    **_HEALTHY_EXAMPLE, "status": "unhealthy",
    "checks": {**_HEALTHY_EXAMPLE["checks"], "database": {"status": "unhealthy", "latency_ms": None}},
}


def _usage(percent: float, threshold: float) -> dict[str, object]:
    return {"status": "healthy" if percent < threshold else "degraded", "percent": percent}


def probe_database() -> ProbeDatabase:
    return current_app.extensions["probe_db"]


@blp.route("/live")
class Live(MethodView):
    @blp.response(200, LiveSchema, example={"status": "alive"})
    def get(self):
        """Liveness: the process answers

        Never touches the database: a database outage must not get healthy workers restarted.
        """
        return {"status": "alive"}


@blp.route("/ready")
class Ready(MethodView):
    @blp.response(200, ReadySchema, example={"status": "ready"})
    @blp.alt_response(503, schema=ReadySchema, description="The database does not answer or its schema is behind.",
                      example={"status": "not ready", "reason": "database schema is not at the current migration"})
    def get(self):
        """Readiness: the database answers and its schema is at the current migration"""
        try:
            current = probe_database().schema_is_current()
        except _DATABASE_ERRORS as exc:
            return {"status": "not ready", "reason": f"database unavailable: {exc.__class__.__name__}"}, 503
        if not current:
            return {"status": "not ready", "reason": "database schema is not at the current migration"}, 503
        return {"status": "ready"}


@blp.route("")
class Health(MethodView):
    @blp.response(200, HealthSchema, example=_HEALTHY_EXAMPLE)
    @blp.alt_response(503, schema=HealthSchema, example=_UNHEALTHY_EXAMPLE,
                      description="The database does not answer (`unhealthy`), or memory or disk use is at or "
                                  "above its threshold (`degraded`).")
    def get(self):
        """Health: database, memory and disk against their thresholds

        200 only when the database answers and memory and disk use are under
        `HEALTH_MEMORY_THRESHOLD` / `HEALTH_DISK_THRESHOLD` percent; otherwise 503 with the same body.
        """
        settings = current_app.extensions["settings"]
        try:
            database = {"status": "healthy", "latency_ms": probe_database().ping()}
        except _DATABASE_ERRORS:
            database = {"status": "unhealthy", "latency_ms": None}
        memory = psutil.virtual_memory().percent
        disk = psutil.disk_usage(DISK_PATH).percent
        checks = {
            "database": database,
            "memory": _usage(memory, settings.health_memory_threshold),
            "disk": _usage(disk, settings.health_disk_threshold),
        }
        if database["status"] != "healthy":
            status = "unhealthy"
        elif any(check["status"] != "healthy" for check in checks.values()):
            status = "degraded"
        else:
            status = "healthy"
        body = {
            "status": status,
            "service": settings.service_name,
            "version": settings.app_version,
            "environment": settings.environment,
            "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
            "uptime_seconds": round(time.monotonic() - _STARTED, 3),
            "checks": checks,
        }
        return body, 200 if status == "healthy" else 503
