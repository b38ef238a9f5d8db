"""The list page's direct formatting gives exactly what marshmallow's field-by-field dump gives."""

import marshmallow as ma

from incident_app import schemas
from incident_app.repository.incidents import ListFilters

VALID = {"title": "Disk full", "service": "storage", "severity": "high"}


def test_page_dump_matches_marshmallow_for_real_incidents(app, client):
    varied = [
        client.post("/api/v1/incidents", json={**VALID, "description": None}).get_json(),
        client.post("/api/v1/incidents", json={**VALID, "description": "d", "severity": "low"}).get_json(),
        client.post("/api/v1/incidents", json={**VALID, "title": "ünïcode ✓"}).get_json(),
    ]
    client.patch(f"/api/v1/incidents/{varied[0]['incident_id']}", json={"status": "acknowledged", "note": "n"})
    client.patch(f"/api/v1/incidents/{varied[1]['incident_id']}", json={"status": "resolved", "assigned_to": None})
    service = app.extensions["incident_service"]
    with service.engine.connect() as conn:
        page = service.list_document(conn, ListFilters(), limit=50, offset=0)
    schema = schemas.IncidentPageSchema()
    assert schema.dump(page) == ma.Schema.dump(schema, page)
    assert len(schema.dump(page)["incidents"]) == 3


def test_every_list_field_has_a_direct_format():
    names = [name for name, _ in schemas.IncidentPageSchema._formatters]
    assert names == list(schemas.IncidentSummarySchema().fields)
