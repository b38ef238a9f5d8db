"""/openapi.json is a valid OpenAPI 3 document that covers the contract; /docs renders from assets
the service serves itself."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

OPERATIONS = {
    ("/api/v1/incidents", "get"), ("/api/v1/incidents", "post"), ("/api/v1/incidents/analytics", "get"),
    ("/api/v1/incidents/{incident_id}", "get"), ("/api/v1/incidents/{incident_id}", "patch"),
    ("/api/v1/incidents/{incident_id}/notes", "post"),
    ("/api/v1/webhooks", "get"), ("/api/v1/webhooks", "post"),
    ("/api/v1/webhooks/{webhook_id}", "get"), ("/api/v1/webhooks/{webhook_id}", "delete"),
    ("/health", "get"), ("/health/ready", "get"), ("/health/live", "get"), ("/metrics", "get"),
}


def spec(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_document_is_valid_openapi_3(client):
    document = spec(client)
    assert document["openapi"].startswith("3.")
    validate(document)


def test_every_contract_operation_is_documented_with_a_summary(client):
    paths = spec(client)["paths"]
    documented = {(path, method) for path, item in paths.items() for method in item if method != "parameters"}
    assert documented >= OPERATIONS
    for path, method in OPERATIONS:
        assert paths[path][method].get("summary"), (path, method)


def test_api_errors_are_documented_with_the_json_error_shape_and_examples(client):
    document = spec(client)
    responses = document["components"]["responses"]
    operation = document["paths"]["/api/v1/incidents/{incident_id}"]["patch"]["responses"]
    for code in ("400", "401", "404", "413", "422", "500", "503"):
        assert code in operation, code
        name = operation[code]["$ref"].rsplit("/", 1)[1]
        content = responses[name]["content"]["application/json"]
        assert content["example"]["code"] == int(code)
        assert content["schema"]["$ref"].endswith("/Error")
    error = document["components"]["schemas"]["Error"]["properties"]
    assert set(error) == {"code", "status", "message", "errors"}


def test_query_parameters_and_probe_responses_are_documented(client):
    paths = spec(client)["paths"]
    listed = {p["name"] for p in paths["/api/v1/incidents"]["get"]["parameters"]}
    assert {"status", "severity", "service", "limit", "offset"} <= listed
    analytics = {p["name"] for p in paths["/api/v1/incidents/analytics"]["get"]["parameters"]}
    assert {"service", "severity", "since", "until"} <= analytics
    assert {"200", "503"} <= set(paths["/health"]["get"]["responses"])
    assert {"200", "503"} <= set(paths["/health/ready"]["get"]["responses"])
    assert "text/plain" in next(iter(paths["/metrics"]["get"]["responses"]["200"]["content"]))


def test_docs_page_loads_only_assets_the_service_serves(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(asset.startswith("/docs/assets/") for asset in assets)
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def test_notes_endpoint_and_the_web_ui_fields_are_described(client):
    document = spec(client)
    schemas = document["components"]["schemas"]
    operation = document["paths"]["/api/v1/incidents/{incident_id}/notes"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schemas[body]["properties"]) == {"content", "author"} and schemas[body]["required"] == ["content"]
    assert schemas[body]["properties"]["content"]["maxLength"] == 10_000
    for code in ("201", "401", "404", "413", "422"):
        assert code in operation["responses"], code
    note = operation["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"id", "content", "author", "created_at"} <= set(schemas[note]["properties"])
    assert schemas[note]["properties"]["id"]["format"] == "uuid"
    # alert_ids on the full incident only, list items without it.
    assert schemas["Incident"]["properties"]["alert_ids"]["items"]["format"] == "uuid"
    assert "alert_ids" not in schemas["IncidentSummary"]["properties"]
