"""Probes for the load balancer and the orchestrator."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import psutil
import sqlalchemy as sa
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from incident_app import migrate
from incident_app.db import transaction

blp = Blueprint("health", __name__, url_prefix="/health", description="Liveness, readiness and health probes.")

_STARTED = time.monotonic()


@blp.route("/live")
class Live(MethodView):
    def get(self):
        """Liveness: the process answers. Never touches the database."""
        return {"status": "alive"}


@blp.route("/ready")
class Ready(MethodView):
    def get(self):
        """Readiness: the database answers and its schema is at the current migration."""
        try:
            with transaction(current_app.extensions["engine"]) as conn:
                current = migrate.is_current(conn)
        except sa.exc.SQLAlchemyError as exc:
            return {"status": "not ready", "reason": f"database unavailable: {exc.__class__.__name__}"}, 503
        if not current:
            return {"status": "not ready", "reason": "database schema is not at the current migration"}, 503
        return {"status": "ready"}


@blp.route("")
class Health(MethodView):
    def get(self):
        """Health: database, memory and disk against their thresholds."""
        settings = current_app.extensions["settings"]
        started = time.perf_counter()
        try:
            with transaction(current_app.extensions["engine"]) as conn:
                conn.exec_driver_sql("SELECT 1")
            database = {"status": "healthy", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        except sa.exc.SQLAlchemyError:
            database = {"status": "unhealthy", "latency_ms": None}
        memory = psutil.virtual_memory().percent
        disk = psutil.disk_usage("/").percent
        checks = {
            "database": database,
            "memory": {"status": "healthy" if memory < settings.health_memory_threshold else "degraded", "percent": memory},
            "disk": {"status": "healthy" if disk < settings.health_disk_threshold else "degraded", "percent": disk},
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
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "uptime_seconds": round(time.monotonic() - _STARTED, 3),
            "checks": checks,
        }
        return body, 200 if status == "healthy" else 503
