"""GET /metrics: the Prometheus scrape, correct across gunicorn workers."""

from __future__ import annotations

from flask import Response, current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client.exposition import choose_encoder

blp = Blueprint("metrics", __name__, url_prefix="/metrics", description="Prometheus metrics.")

_EXAMPLE = """\
# HELP incidents_total Incidents by the status they entered, and severity.
# TYPE incidents_total counter
incidents_total{severity="critical",status="open"} 12.0
# HELP open_incidents Unresolved (open or acknowledged) incidents.
# TYPE open_incidents gauge
open_incidents{severity="critical"} 3.0
open_incidents{severity="high"} 0.0
open_incidents{severity="medium"} 1.0
open_incidents{severity="low"} 0.0
"""


@blp.route("")
class Metrics(MethodView):
    @blp.response(
        200,
        description="Prometheus text format (OpenMetrics when the Accept header asks for it).",
        content_type="text/plain; version=0.0.4; charset=utf-8",
        example=_EXAMPLE,
    )
    def get(self):
        """Prometheus metrics

        `incidents_total{status,severity}` and `oncall_notifications_sent_total{channel,status}`
        (counters), `incident_mtta_seconds{severity}` and `incident_mttr_seconds{severity}`
        (histograms, buckets from `MTTA_BUCKETS` / `MTTR_BUCKETS`), summed over every gunicorn
        worker; `open_incidents{severity}` (gauge), counted by the database at each scrape, the same
        figure on every replica; HTTP request count and latency by route template and status.
        """
        encode, content_type = choose_encoder(request.headers.get("Accept"))
        return Response(encode(current_app.extensions["metrics_registry"]), content_type=content_type)
