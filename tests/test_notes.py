"""Notes: each has an `id` and its `content` (as the platform's web UI reads them), and
POST /api/v1/incidents/{incident_id}/notes appends one exactly as a PATCH note does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

T0 = datetime(2026, 11, 26, 10, 4, 0, 123456, tzinfo=UTC)


@pytest.fixture
def incident(create_incident):
    return create_incident()


def add_note(client, incident_id, body):
    return client.post(f"/api/v1/incidents/{incident_id}/notes", json=body)


def read(client, incident):
    return client.get(f"/api/v1/incidents/{incident['incident_id']}").get_json()


def events_of(client, incident, kind):
    events = client.get(f"/api/v1/incidents/{incident['incident_id']}/events").get_json()["events"]
    return [e for e in events if e["type"] == kind]


def test_post_appends_the_note_and_answers_201_with_it(client, incident, clock):
    clock.set(T0)
    response = add_note(client, incident["incident_id"], {"content": "  rolled back  ", "author": "SRE Admin"})
    assert response.status_code == 201, response.get_json()
    note = response.get_json()
    assert set(note) == {"id", "content", "author", "created_at"}
    assert uuid.UUID(note["id"]).version == 4
    assert (note["content"], note["author"]) == ("rolled back", "SRE Admin")
    assert note["created_at"] == "2026-11-26T10:04:00.123456+00:00"
    stored = read(client, incident)
    assert stored["notes"] == [note]
    assert stored["updated_at"] == note["created_at"]


def test_author_is_optional(client, incident):
    response = add_note(client, incident["incident_id"], {"content": "watching"})
    assert response.status_code == 201
    assert response.get_json()["author"] is None


def test_post_and_patch_notes_are_one_list_with_one_shape_and_distinct_ids(client, incident):
    url = f"/api/v1/incidents/{incident['incident_id']}"
    patched = client.patch(url, json={"note": "first", "author": "bob"}).get_json()["notes"][-1]
    posted = add_note(client, incident["incident_id"], {"content": "second", "author": "carol"}).get_json()
    notes = read(client, incident)["notes"]
    assert notes == [patched, posted]
    assert set(patched) == set(posted) == {"id", "content", "author", "created_at"}
    assert patched["id"] != posted["id"]


def test_post_records_the_same_note_added_event_as_a_patch(client, incident):
    url = f"/api/v1/incidents/{incident['incident_id']}"
    client.patch(url, json={"note": "by patch", "author": "bob"})
    add_note(client, incident["incident_id"], {"content": "by post", "author": "carol"})
    events = events_of(client, incident, "note_added")
    # The event's details are the note as the incident keeps it; actor and time are the note's.
    assert [e["details"] for e in events] == read(client, incident)["notes"]
    assert [e["actor"] for e in events] == ["bob", "carol"]
    assert [e["created_at"] for e in events] == [e["details"]["created_at"] for e in events]


def test_a_note_changes_nothing_else(client, incident):
    before = read(client, incident)
    add_note(client, incident["incident_id"], {"content": "looking"})
    after = read(client, incident)
    unchanged = {k: v for k, v in after.items() if k not in ("notes", "updated_at")}
    assert unchanged == {k: v for k, v in before.items() if k not in ("notes", "updated_at")}


def test_notes_can_be_posted_after_resolution(client, incident):
    client.patch(f"/api/v1/incidents/{incident['incident_id']}", json={"status": "resolved"})
    assert add_note(client, incident["incident_id"], {"content": "postmortem on Monday"}).status_code == 201
    assert read(client, incident)["status"] == "resolved"


@pytest.mark.parametrize("incident_id", ["inc-0000000000000000", "nope", "inc-ZZZZ", "x" * 2000])
def test_unknown_incident_is_404_json(client, incident_id):
    response = add_note(client, incident_id, {"content": "anyone there?"})
    assert response.status_code == 404
    assert response.get_json()["code"] == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "content"),
        ({"content": ""}, "content"),
        ({"content": "   "}, "content"),
        ({"content": "n" * 10_001}, "content"),
        ({"content": None}, "content"),
        ({"content": 42}, "content"),
        ({"content": "a\x00b"}, "content"),
        ({"content": "ok", "author": "a" * 256}, "author"),
        ({"content": "ok", "author": "\x00"}, "author"),
        ({"content": "ok", "text": "old name"}, "text"),
        ({"note": "the PATCH's name"}, "note"),
    ],
)
def test_invalid_body_is_422_naming_the_field_and_adds_nothing(client, incident, body, field):
    response = add_note(client, incident["incident_id"], body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    assert read(client, incident)["notes"] == []


def test_validation_comes_before_not_found(client):
    response = add_note(client, "inc-0000000000000000", {"content": ""})
    assert response.status_code == 422


def test_longest_content_is_accepted(client, incident):
    response = add_note(client, incident["incident_id"], {"content": "n" * 10_000})
    assert response.status_code == 201
    assert len(response.get_json()["content"]) == 10_000


def test_body_over_one_mebibyte_is_413_json(client, incident):
    response = client.post(f"/api/v1/incidents/{incident['incident_id']}/notes",
                           data=b'{"content": "' + b"x" * (1 << 20) + b'"}', content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["code"] == 413


def test_wrong_method_is_405_json(client, incident):
    response = client.get(f"/api/v1/incidents/{incident['incident_id']}/notes")
    assert response.status_code == 405
    assert response.get_json()["code"] == 405
