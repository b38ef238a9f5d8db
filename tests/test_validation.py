"""Bad input is a 4xx with the contract's JSON error shape, never a 500 or an HTML page."""

import json

import pytest

from tests.support.incidents import VALID


def assert_error(response, code, *fields):
    assert response.status_code == code, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code and isinstance(body["status"], str) and body["message"]
    for field in fields:
        assert field in body["errors"], body
    return body


@pytest.fixture
def incident_id(create_incident):
    return create_incident()["incident_id"]


# --------------------------------------------------------------------------- create


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"title": None}, "title"),
        ({"title": 42}, "title"),
        ({"title": "nul\x00byte"}, "title"),
        ({"title": "lone \ud800 surrogate"}, "title"),
        ({"service": ""}, "service"),
        ({"service": "s" * 256}, "service"),
        ({"service": "a\x00b"}, "service"),
        ({"severity": "urgent"}, "severity"),
        ({"severity": "CRITICAL"}, "severity"),
        ({"description": "d" * 20_001}, "description"),
        ({"description": "\x00"}, "description"),
        ({"alert_ids": ["not-a-uuid"]}, "alert_ids"),
        ({"alert_ids": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}, "alert_ids"),
        ({"alert_ids": [str(i).zfill(32) for i in range(101)]}, "alert_ids"),
        ({"unexpected": 1}, "unexpected"),
        ({"status": "resolved"}, "status"),
    ],
)
def test_invalid_create_body_is_422_naming_the_field(client, change, field):
    # json.dumps keeps a lone surrogate as an escape that the server's JSON parser turns back into one.
    body = json.dumps({**VALID, **change})
    response = client.post("/api/v1/incidents", data=body, content_type="application/json")
    assert_error(response, 422, field)


@pytest.mark.parametrize("missing", ["title", "service", "severity"])
def test_missing_required_field_is_422(client, missing):
    body = {k: v for k, v in VALID.items() if k != missing}
    assert_error(client.post("/api/v1/incidents", json=body), 422, missing)


def test_boundaries_are_accepted(client):
    body = {**VALID, "title": "t" * 500, "service": "s" * 255, "description": "d" * 20_000,
            "alert_ids": [f"00000000-0000-0000-0000-{i:012d}" for i in range(100)]}
    response = client.post("/api/v1/incidents", json=body)
    assert response.status_code == 201
    assert len(response.get_json()["alerts"]) == 100


def test_hundred_distinct_alerts_after_collapsing_duplicates_is_accepted(client):
    ids = [f"00000000-0000-0000-0000-{i % 100:012d}" for i in range(150)]
    assert client.post("/api/v1/incidents", json={**VALID, "alert_ids": ids}).status_code == 201


def test_null_description_is_accepted(client):
    assert client.post("/api/v1/incidents", json={**VALID, "description": None}).status_code == 201


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("[1, 2]", "application/json"),
        ('"just a string"', "application/json"),
        ("null", "application/json"),
        ("{not json", "application/json"),
        ("title=x&service=y", "application/x-www-form-urlencoded"),
        ("plain text", "text/plain"),
        ("", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        ('{"title": ' * 500 + "1" + "}" * 500, "application/json"),
    ],
    ids=["array", "string", "null", "malformed", "form", "text", "empty", "invalid-utf8", "deep-nesting"],
)
def test_non_object_bodies_are_4xx_json(client, data, content_type):
    response = client.post("/api/v1/incidents", data=data, content_type=content_type)
    assert 400 <= response.status_code < 500
    assert response.is_json and response.get_json()["code"] == response.status_code


# --------------------------------------------------------------------------- patch


def test_empty_patch_is_400(client, incident_id):
    body = assert_error(client.patch(f"/api/v1/incidents/{incident_id}", json={}), 400)
    assert "status" in body["message"] and "note" in body["message"]


def test_author_alone_is_400(client, incident_id):
    assert_error(client.patch(f"/api/v1/incidents/{incident_id}", json={"author": "bob"}), 400)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "closed"}, "status"),
        ({"status": 1}, "status"),
        ({"assigned_to": 7}, "assigned_to"),
        ({"assigned_to": "a" * 256}, "assigned_to"),
        ({"note": ""}, "note"),
        ({"note": "n" * 10_001}, "note"),
        ({"note": "a\x00b"}, "note"),
        ({"note": "ok", "author": "\x00"}, "author"),
        ({"severity": "low"}, "severity"),
        ({"status": "acknowledged", "bogus": True}, "bogus"),
    ],
)
def test_invalid_patch_is_422_before_anything_else(client, incident_id, body, field):
    assert_error(client.patch(f"/api/v1/incidents/{incident_id}", json=body), 422, field)


def test_validation_comes_before_not_found(client):
    assert_error(client.patch("/api/v1/incidents/inc-0000000000000000", json={"status": "x"}), 422, "status")


def test_unknown_field_with_empty_patch_is_422_not_400(client, incident_id):
    assert_error(client.patch(f"/api/v1/incidents/{incident_id}", json={"nope": 1}), 422, "nope")


# --------------------------------------------------------------------------- not found and other paths


# Every endpoint of one incident, with a body it would accept.
ONE_INCIDENT = {
    "get": ("GET", "", None),
    "patch": ("PATCH", "", {"status": "resolved"}),
    "timeline": ("GET", "/events", None),
    "link alerts": ("POST", "/alerts", {"alert_ids": ["3fa85f64-5717-4562-b3fc-2c963f66afa6"]}),
}


@pytest.mark.parametrize("endpoint", ONE_INCIDENT)
@pytest.mark.parametrize(
    "incident_id", ["inc-0000000000000000", "nope", "inc-ZZZZ", "inc-%00", "x" * 2000, "inc-00000000000000001"]
)
def test_unknown_incident_is_404_json(client, endpoint, incident_id):
    method, suffix, body = ONE_INCIDENT[endpoint]
    assert_error(client.open(f"/api/v1/incidents/{incident_id}{suffix}", method=method, json=body), 404)


def test_unknown_route_is_404_json(client):
    assert_error(client.get("/api/v1/nothing-here"), 404)
    assert_error(client.get("/"), 404)


def test_wrong_method_is_405_json(client, incident_id):
    response = client.delete(f"/api/v1/incidents/{incident_id}")
    assert_error(response, 405)
    assert "PATCH" in response.headers["Allow"]
    assert_error(client.put("/api/v1/incidents", json=VALID), 405)


def test_body_over_one_mebibyte_is_413_json(client):
    response = client.post("/api/v1/incidents", data=b'{"title": "' + b"x" * (1 << 20) + b'"}',
                           content_type="application/json")
    assert_error(response, 413)


def test_unexpected_exception_is_500_json_without_traceback(app, client, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.extensions["incident_service"], "get_incident", explode)
    response = client.get("/api/v1/incidents/inc-0000000000000000")
    body = assert_error(response, 500)
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert body["message"] == "internal server error"


def test_request_id_is_echoed_or_made(client):
    echoed = client.get("/api/v1/incidents", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    made = client.get("/api/v1/incidents", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["X-Request-ID"] not in ("", "bad id with spaces")
    assert client.get("/nowhere").headers["X-Request-ID"]
