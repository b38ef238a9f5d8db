"""The service's Prometheus metrics. Updated only after a commit, only when a row really changed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from incident_app.lifecycle import Transition
from incident_app.settings import Settings


class IncidentMetrics:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = registry
        self.incidents_total = Counter(
            "incidents_total", "Incidents by the status they entered, and severity.",
            ["status", "severity"], registry=registry,
        )
        self.notifications_total = Counter(
            "oncall_notifications_sent_total", "Notification attempts, by channel and outcome.",
            ["channel", "status"], registry=registry,
        )
        self.mtta = Histogram(
            "incident_mtta_seconds", "Time from creation to acknowledgement.",
            ["severity"], buckets=settings.mtta_buckets, registry=registry,
        )
        self.mttr = Histogram(
            "incident_mttr_seconds", "Time from creation to resolution.",
            ["severity"], buckets=settings.mttr_buckets, registry=registry,
        )
        self.escalations_total = Counter(
            "incident_escalations_total", "Escalations of incidents left open, by severity.",
            ["severity"], registry=registry,
        )

    def incident_opened(self, severity: str) -> None:
        self.incidents_total.labels(status="open", severity=severity).inc()

    def status_changed(self, transition: Transition, severity: str, seconds_since_creation: float) -> None:
        self.incidents_total.labels(status=transition.to_status, severity=severity).inc()
        if transition.acknowledges:
            self.mtta.labels(severity=severity).observe(seconds_since_creation)
        elif transition.resolves:
            self.mttr.labels(severity=severity).observe(seconds_since_creation)

    def notification_attempted(self, channel: str, delivered: bool) -> None:
        self.notifications_total.labels(channel=channel, status="sent" if delivered else "failed").inc()

    def escalated(self, severity: str) -> None:
        self.escalations_total.labels(severity=severity).inc()
