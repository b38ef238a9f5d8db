"""CORS for the platform's web UI: headers only for browsers of allowed origins, and preflights that
offer what the route really takes."""

from __future__ import annotations

import pytest

UI = "http://localhost:3000"
INCIDENT = "/api/v1/incidents/inc-0123456789abcdef"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/incidents"), ("POST", "/api/v1/incidents"), ("GET", INCIDENT), ("GET", "/api/v1/nowhere")],
)
def test_a_request_without_origin_gets_no_cors_headers(client, method, path):
    response = client.open(path, method=method, json={} if method == "POST" else None)
    assert response.status_code < 500
    assert not [name for name, _ in response.headers if name.lower().startswith("access-control-")]


def test_an_allowed_origin_is_echoed_with_the_exposed_headers(client):
    response = client.get("/api/v1/incidents", headers={"Origin": UI})
    assert response.headers["Access-Control-Allow-Origin"] == UI
    assert "Origin" in response.headers["Vary"]
    assert "Location" in response.headers["Access-Control-Expose-Headers"]


def test_an_origin_outside_cors_origins_is_not_allowed(client):
    response = client.get("/api/v1/incidents", headers={"Origin": "https://elsewhere.example"})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(
    ("path", "asked", "methods"),
    [
        ("/api/v1/incidents", "POST", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("/api/v1/incidents/analytics", "GET", {"GET", "HEAD", "OPTIONS"}),
        (INCIDENT, "PATCH", {"GET", "HEAD", "OPTIONS", "PATCH"}),
        (f"{INCIDENT}/events", "GET", {"GET", "HEAD", "OPTIONS"}),
        (f"{INCIDENT}/alerts", "POST", {"OPTIONS", "POST"}),
        (f"{INCIDENT}/notes", "POST", {"OPTIONS", "POST"}),
    ],
)
def test_a_preflight_offers_only_the_methods_of_its_route(client, path, asked, methods):
    response = client.options(path, headers={"Origin": UI, "Access-Control-Request-Method": asked})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == UI
    offered = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert offered == methods
