"""The service's Prometheus metrics. Counters and histograms are updated only after a commit, only
when a row really changed; `open_incidents` is read from the database at scrape time.

Under gunicorn, prometheus_client runs in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set up by
gunicorn.conf.py): every worker writes its samples to files there, and whichever worker answers
/metrics sums them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from flask import Flask, Request, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics

from incident_app.lifecycle import SEVERITIES, STATUSES, Transition
from incident_app.peers.notify import CHANNEL
from incident_app.settings import Settings

log = logging.getLogger(__name__)

# The `*_created` series are not part of the contract, and multiprocess mode never exports them:
# leave them out everywhere so a scrape looks the same with one process or many.
disable_created_metrics()

METRICS_PATH = "/metrics"
# A method outside this set is a client's free string: such requests are not counted at all.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
        self.grouped_total = Counter(
            "incidents_grouped_total", "Creates folded into an unresolved incident of their dedup_key, by the "
            "incident's severity after grouping.", ["severity"], registry=registry,
        )
        self.webhook_deliveries_total = Counter(
            "webhook_deliveries_total", "Webhook delivery attempts, by outcome.", ["status"], registry=registry,
        )
        self.webhook_deliveries_given_up_total = Counter(
            "webhook_deliveries_given_up_total", "Webhook deliveries given up after failing for 24 hours.",
            registry=registry,
        )
        self._create_every_series()

    def _create_every_series(self) -> None:
        # A series that appears only with its first event hides that event from rate() and
        # increase(): every label value the service uses exists at 0 from the first scrape. In
        # multiprocess mode each worker writes these zeros to its own files, and zeros sum to zero.
        for severity in SEVERITIES:
            for status in STATUSES:
                self.incidents_total.labels(status=status, severity=severity)
            self.mtta.labels(severity=severity)
            self.mttr.labels(severity=severity)
            self.escalations_total.labels(severity=severity)
            self.grouped_total.labels(severity=severity)
        for outcome in ("sent", "failed"):
            self.notifications_total.labels(channel=CHANNEL, status=outcome)
            self.webhook_deliveries_total.labels(status=outcome)

    def incident_opened(self, severity: str) -> None:
        self.incidents_total.labels(status="open", severity=severity).inc()

    def incident_grouped(self, severity: str) -> None:
        self.grouped_total.labels(severity=severity).inc()

    def status_changed(self, transition: Transition, severity: str, seconds_since_creation: float) -> None:
        self.incidents_total.labels(status=transition.to_status, severity=severity).inc()
        if transition.acknowledges:
            self.mtta.labels(severity=severity).observe(seconds_since_creation)
        elif transition.resolves:
            self.mttr.labels(severity=severity).observe(seconds_since_creation)

    def notification_attempted(self, channel: str, delivered: bool) -> None:
        self.notifications_total.labels(channel=channel, status="sent" if delivered else "failed").inc()

    def webhook_attempted(self, delivered: bool, *, gave_up: bool = False) -> None:
        self.webhook_deliveries_total.labels(status="sent" if delivered else "failed").inc()
        if gave_up:
            self.webhook_deliveries_given_up_total.inc()

    def escalated(self, severity: str) -> None:
        self.escalations_total.labels(severity=severity).inc()


class OpenIncidentsCollector(Collector):
    """`open_incidents{severity}` as the database counts it now, read from the counts table.

    Counting in the database, rather than inc()/dec() in a worker, keeps the gauge true across
    workers, restarts, other replicas and rows changed behind the service's back. When the database
    does not answer in time the gauge has no samples: absent is honest, a stale number is not.
    """

    def __init__(self, count_unresolved: Callable[[], Mapping[str, int]]) -> None:
        self.count_unresolved = count_unresolved

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("open_incidents", "Unresolved (open or acknowledged) incidents.", labels=["severity"])

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe() the registry would run the query at registration.
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        try:
            counts = self.count_unresolved()
        except Exception as exc:  # a scrape must still return the counters when the database is down
            log.warning("open_incidents not collected: %s", exc.__class__.__name__)
            yield family
            return
        for severity in SEVERITIES:
            family.add_metric([severity], counts.get(severity, 0))
        yield family


def route(req: Request) -> str:
    """The label of HTTP request metrics: the route as declared, never the raw path."""
    return req.url_rule.rule if req.url_rule is not None else "<unmatched>"


def install_http_metrics(app: Flask, metrics: IncidentMetrics) -> PrometheusMetrics:
    """Request count and latency by method, route template and status, from prometheus-flask-exporter.

    Its own /metrics endpoint is not used: in multiprocess mode it exposes only the worker files,
    and the service also exports the database-backed gauge (see exposition_registry).
    """
    exporter = PrometheusMetrics(
        app, path=None, registry=metrics.registry, group_by=route, excluded_paths=[f"^{METRICS_PATH}$"]
    )

    @app.before_request
    def _skip_unknown_methods() -> None:
        if request.method not in KNOWN_METHODS:
            request.prom_do_not_track = True  # the exporter's own opt-out marker

    return exporter


def exposition_registry(
    metrics: IncidentMetrics, open_incidents: Collector, *, multiprocess_dir: str | None
) -> CollectorRegistry:
    """What /metrics renders: every worker's counters and histograms, plus the database gauge."""
    registry = CollectorRegistry()
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)
        # Per-process collectors (CPU, memory, GC) cannot be summed across workers: only the
        # answering worker's would show, so multiprocess mode leaves them out.
    else:
        registry.register(metrics.registry)
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(open_incidents)
    return registry
