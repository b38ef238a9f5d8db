"""API_KEYS: bearer keys for /api/v1, open probes, metrics and docs; a production warning when
unset; bodies over 1 MiB are refused with 413 JSON."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.incidents import VALID

KEYS = ("first-key-0123456789", "second-key-9876543210")


@pytest.fixture
def guarded(make_app):
    return make_app(api_keys=KEYS)


def api_operations(app):
    """Every (method, concrete path) of /api/v1 in the OpenAPI document."""
    spec = app.test_client().get("/openapi.json").get_json()
    for template, operations in spec["paths"].items():
        if not template.startswith("/api/v1"):
            continue
        path = re.sub(r"\{[^}]+\}", "inc-0000000000000000", template)
        for method in operations:
            if method in ("get", "post", "patch", "put", "delete"):
                yield method.upper(), path


def test_every_api_route_needs_a_key(guarded):
    client = guarded.test_client()
    operations = list(api_operations(guarded))
    assert len(operations) >= 6
    for method, path in operations:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEYS[0]}"},
                        {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEYS[0]}x"}):
            response = client.open(path, method=method, json=VALID, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.get_json()["code"] == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("key", KEYS)
def test_any_configured_key_opens_the_api(guarded, key):
    client = guarded.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    created = client.post("/api/v1/incidents", json=VALID, headers=headers)
    assert created.status_code == 201
    assert client.get("/api/v1/incidents", headers=headers).status_code == 200
    # The scheme is case-insensitive, as HTTP says.
    assert client.get("/api/v1/incidents", headers={"Authorization": f"bearer {key}"}).status_code == 200


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/health", "/metrics", "/openapi.json"])
def test_probes_metrics_and_docs_stay_open(guarded, path):
    assert guarded.test_client().get(path).status_code != 401


def test_cors_preflight_needs_no_key(guarded):
    response = guarded.test_client().options(
        "/api/v1/incidents",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "Authorization, Content-Type, Idempotency-Key"},
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_without_api_keys_the_api_is_open(client):
    assert client.post("/api/v1/incidents", json=VALID).status_code == 201


def test_production_without_api_keys_logs_a_warning(make_app, capfd):
    # The service logs JSON lines to stderr (it installs its own handler, so read what it wrote).
    make_app(environment="production")
    warnings = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "API_KEYS" in line]
    assert warnings and warnings[0]["level"] == "WARNING"


def test_development_without_api_keys_logs_no_warning(make_app, capfd):
    make_app(environment="development")
    assert "API_KEYS" not in capfd.readouterr().err


def test_body_over_one_mib_is_413_json(guarded):
    headers = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}
    body = b'{"title": "' + b"x" * (1 << 20) + b'", "service": "s", "severity": "low"}'
    response = guarded.test_client().post("/api/v1/incidents", data=body, headers=headers)
    assert response.status_code == 413
    assert response.get_json()["code"] == 413


def test_body_just_under_one_mib_is_read(guarded):
    headers = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}
    padding = (1 << 20) - 200
    body = b'{"title": "t", "service": "s", "severity": "low", "description": "' + b"x" * padding + b'"}'
    response = guarded.test_client().post("/api/v1/incidents", data=body, headers=headers)
    assert response.status_code == 422  # read and validated (description too long), not refused for size
    assert "description" in response.get_json()["errors"]
