"""/metrics in one process, on both backends: the contract's names, types and labels, the
database-backed open_incidents gauge, and HTTP metrics by route template."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from incident_app.lifecycle import SEVERITIES, STATUSES
from tests.support.proxy import TcpProxy

CONTRACT = {
    "incidents": ("counter", {"status", "severity"}),
    "oncall_notifications_sent": ("counter", {"channel", "status"}),
    "incident_mtta_seconds": ("histogram", {"severity"}),
    "incident_mttr_seconds": ("histogram", {"severity"}),
    "open_incidents": ("gauge", {"severity"}),
}


def families(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}


def open_counts(client) -> dict[str, float]:
    return {s.labels["severity"]: s.value for s in families(client)["open_incidents"].samples}


def test_contract_metrics_have_their_types_and_label_names(client, create_incident):
    incident = create_incident(severity="high")
    client.patch(f"/api/v1/incidents/{incident['incident_id']}", json={"status": "acknowledged"})
    client.patch(f"/api/v1/incidents/{incident['incident_id']}", json={"status": "resolved"})
    found = families(client)
    for name, (kind, labels) in CONTRACT.items():
        assert found[name].type == kind, name
        sample_labels = {key for s in found[name].samples for key in s.labels if key != "le"}
        assert sample_labels == labels, name


def test_every_series_exists_at_zero_before_the_first_event(client):
    found = families(client)
    for name, labels in (
        ("incidents", [{"status": t, "severity": s} for t in STATUSES for s in SEVERITIES]),
        ("oncall_notifications_sent", [{"channel": "mock", "status": t} for t in ("sent", "failed")]),
        ("incident_escalations", [{"severity": s} for s in SEVERITIES]),
        ("incidents_grouped", [{"severity": s} for s in SEVERITIES]),
    ):
        samples = [s for s in found[name].samples if s.name.endswith("_total")]
        assert sorted((sorted(s.labels.items()), s.value) for s in samples) == sorted(
            (sorted(want.items()), 0.0) for want in labels
        ), name
    for name in ("incident_mtta_seconds", "incident_mttr_seconds"):
        counts = {s.labels["severity"]: s.value for s in found[name].samples if s.name.endswith("_count")}
        assert counts == dict.fromkeys(SEVERITIES, 0.0), name


def test_open_incidents_lists_every_severity_with_zero_when_none(client):
    assert open_counts(client) == dict.fromkeys(SEVERITIES, 0)


def test_open_incidents_follows_creates_and_resolutions(client, create_incident):
    first = create_incident(severity="critical")
    create_incident(severity="critical")
    acknowledged = create_incident(severity="low")
    client.patch(f"/api/v1/incidents/{acknowledged['incident_id']}", json={"status": "acknowledged"})
    assert open_counts(client) == {"critical": 2, "high": 0, "medium": 0, "low": 1}
    client.patch(f"/api/v1/incidents/{first['incident_id']}", json={"status": "resolved"})
    assert open_counts(client) == {"critical": 1, "high": 0, "medium": 0, "low": 1}


def test_same_status_again_observes_nothing(client, create_incident):
    incident = create_incident(severity="medium")
    for _ in range(3):
        response = client.patch(f"/api/v1/incidents/{incident['incident_id']}", json={"status": "acknowledged"})
        assert response.status_code == 200
    mtta = families(client)["incident_mtta_seconds"]
    assert [s.value for s in mtta.samples if s.name.endswith("_count") and s.labels["severity"] == "medium"] == [1]


def test_http_metrics_are_labelled_by_route_template_never_raw_path(client, create_incident):
    incident = create_incident(severity="low")
    client.get(f"/api/v1/incidents/{incident['incident_id']}")
    client.get("/no/such/page")
    http = families(client)["flask_http_request_duration_seconds"]
    routes = {s.labels["route"] for s in http.samples}
    assert "/api/v1/incidents/<string:incident_id>" in routes
    assert "<unmatched>" in routes
    assert not any(incident["incident_id"] in route or "/no/such" in route for route in routes)
    statuses = {(s.labels["route"], s.labels["status"]) for s in http.samples}
    assert ("/api/v1/incidents", "201") in statuses


def test_unknown_http_methods_are_not_a_label_value(client):
    client.open("/api/v1/incidents", method="BREW")
    text = client.get("/metrics").get_data(as_text=True)
    assert "BREW" not in text


@pytest.fixture
def proxied_app(make_app, postgres_url):
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    app = make_app(database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    yield app, proxy
    proxy.close()


def test_scrape_keeps_counters_and_drops_the_gauge_when_the_database_is_down(proxied_app):
    app, proxy = proxied_app
    client = app.test_client()
    assert client.post("/api/v1/incidents", json={"title": "x", "service": "s", "severity": "high"}).status_code == 201
    proxy.cut()
    started = time.monotonic()
    response = client.get("/metrics")
    assert time.monotonic() - started < 2.5
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'incidents_total{severity="high",status="open"} 1.0' in text
    assert "# TYPE open_incidents gauge" in text
    assert "open_incidents{" not in text
