"""One definition of each document: the incident's fields are the columns of `incidents` (documents.py),
and the marshmallow schemas, the fast formatter and the SQL that writes a page are all made from it.
These tests fail when a field is added in one place only, or when two formatters disagree on a value."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from incident_app import documents, schemas
from incident_app.repository.pages import ListFilters, list_incidents
from incident_app.store.sqlite import SqliteStore
from incident_app.tables import incident_alerts, incidents
from tests.support.reliability import wait_until

URL = "/api/v1/incidents"
T0 = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
QUERIES = [
    {}, {"status": "open"}, {"severity": "low"}, {"service": "search"},
    {"status": "resolved", "service": "payment-api"}, {"service": "nobody"},
    {"offset": 2}, {"offset": 50}, {"limit": 1, "offset": 1},
]


@pytest.fixture
def varied(client, app, create_incident, clock) -> None:
    """Incidents with every kind of value a field can hold: nulls, escapes, notes, durations, ties."""
    clock.set(T0)
    create_incident(title='Quotes " and \\ backslash\nnew line \x01 ünïcode ✓', service="payment-api", description=None)
    clock.set(T0 + timedelta(seconds=1))
    noted = create_incident(service="search", severity="low", description="d", status="acknowledged")
    for note in ("rolled back\t\"the\" deploy", "ünïcode ✓"):
        response = client.patch(f"{URL}/{noted['incident_id']}", json={"note": note, "author": None})
        assert response.status_code == 200
    clock.set(T0 + timedelta(seconds=2, microseconds=1))
    create_incident(service="payment-api", status="resolved")
    clock.set(T0 + timedelta(hours=1))
    escalated = create_incident()
    clock.set(T0 + timedelta(hours=2))
    for _ in range(3):  # created together: newest first, then by incident_id
        create_incident()
    with app.extensions["engine"].begin() as conn:
        conn.execute(sa.update(incidents).where(incidents.c.incident_id == escalated["incident_id"])
                     .values(escalation_level=2, escalated_at=T0 + timedelta(hours=1, minutes=5)))


def declared_dump(app, filters: ListFilters, *, limit: int, offset: int) -> dict:
    """The page as marshmallow dumps it through the declared response schema: the reference."""
    with app.extensions["engine"].connect() as conn:
        rows, total = list_incidents(conn, filters, limit=limit, offset=offset)
    page = {"incidents": [documents.incident_document(row) for row in rows], "total": total,
            "limit": limit, "offset": offset}
    return schemas.IncidentPageSchema().dump(page)


@pytest.mark.parametrize("query", QUERIES)
def test_page_the_store_writes_is_the_declared_schemas_dump(client, app, varied, query):
    """Whichever store runs (PostgreSQL writes the JSON itself; SQLite formats rows directly), the
    body sent is what IncidentPageSchema would dump, field for field, value for value."""
    filters = ListFilters(**{k: v for k, v in query.items() if k in ("status", "severity", "service")})
    paging = {"limit": query.get("limit", 50), "offset": query.get("offset", 0)}
    expected = declared_dump(app, filters, **paging)
    written = app.extensions["store"].page(filters, **paging)
    assert json.loads(written.body) == expected
    response = client.get(f"{URL}?{urlencode(query)}")
    assert response.status_code == 200 and response.get_json() == expected


def test_direct_formatter_matches_the_schema_on_postgresql_rows_too(app, varied):
    """SqliteStore's formatting of rows read from PostgreSQL (its own types) gives the same page."""
    page = SqliteStore(app.extensions["engine"]).page(ListFilters(), limit=50, offset=0)
    assert json.loads(page.body) == declared_dump(app, ListFilters(), limit=50, offset=0)
    assert len(json.loads(page.body)["incidents"]) == 7


def test_document_fields_are_the_incident_columns_with_the_two_durations():
    names = [field.name for field in documents.FIELDS]
    columns = list(incidents.c.keys())
    assert [name for name in names if name not in documents.DERIVED_SECONDS] == columns
    assert set(names) - set(columns) == {"mtta_seconds", "mttr_seconds"}


def test_schemas_declare_exactly_the_document_fields():
    names = [field.name for field in documents.FIELDS]
    assert list(schemas.IncidentSummarySchema().fields) == names
    assert list(schemas.IncidentSchema().fields) == [*names, "alerts", "alert_ids"]
    item = schemas.IncidentPageSchema().fields["incidents"].inner.nested
    assert item is schemas.IncidentSummarySchema


def test_full_document_has_exactly_the_fields_of_incident_schema(app, client, create_incident):
    created = create_incident(alert_ids=["3fa85f64-5717-4562-b3fc-2c963f66afa6"])
    assert list(created) == list(schemas.IncidentSchema().fields)
    with app.extensions["engine"].connect() as conn:
        row = conn.execute(sa.select(incidents).where(incidents.c.incident_id == created["incident_id"])).one()
    assert list(documents.incident_document(row, [])) == list(schemas.IncidentSchema().fields)


def test_nullable_columns_are_nullable_fields_and_the_others_required():
    fields = schemas.IncidentSummarySchema().fields
    for column in incidents.columns:
        assert fields[column.name].allow_none is bool(column.nullable), column.name
        assert fields[column.name].required is not column.nullable, column.name


def test_a_column_with_no_document_form_is_refused_at_import():
    with pytest.raises(TypeError, match="no document form"):
        documents._kind(sa.Column("extra", sa.JSON()))


ALERT_IDS = ["3fa85f64-5717-4562-b3fc-2c963f66afa6", "9b2e4c1a-0f5d-4e3b-8a7c-1d2e3f4a5b6c"]


@pytest.mark.parametrize("enriched", [False, True])
def test_created_incident_is_the_declared_schemas_dump(client, app, create_incident, enriched):
    """The create's answer is written from FIELDS (documents.incident_json), alerts and all: the
    body IncidentSchema would dump, bare links or with the platform's alert fields and a null."""
    created = create_incident(alert_ids=ALERT_IDS)
    with app.extensions["engine"].connect() as conn:
        row = conn.execute(sa.select(incidents).where(incidents.c.incident_id == created["incident_id"])).one()
    linked = [{**alert, "alert_id": uuid.UUID(alert["alert_id"]),
               "linked_at": datetime.fromisoformat(alert["linked_at"])} for alert in created["alerts"]]
    assert created == schemas.IncidentSchema().dump(documents.incident_document(row, linked))
    alerts = [{**alert, "linked_at": T0} for alert in linked]
    if enriched:
        alerts[0].update(service="payment-api", severity="high", message=None, timestamp=T0)
        alerts[1].update(service="search", severity="low", message='"quoted" ✓', timestamp=None)
    document = documents.incident_document(row, alerts)
    assert documents.incident_json(document) == schemas.IncidentSchema().dump(document)


@pytest.mark.parametrize("prefix", ["u/", 'http://alerts.example/"q"\\b/\u00fc\'\t/'])
def test_alerts_written_apart_splice_into_the_same_document(client, app, create_incident, clock, prefix):
    """A grouped create's answer splices its alerts' JSON texts (AlertsJson) into the rest of the
    document: the same document as incident_json's, whichever store wrote the texts, and the texts
    PostgreSQL writes are those AlertsJson.of formats from the alerts read into Python, whatever
    the alerts' url holds (PostgreSQL writes a link's object as text, its url escaped beforehand)."""
    clock.set(T0)
    created = create_incident(alert_ids=ALERT_IDS)
    store = app.extensions["store"]
    with app.extensions["engine"].connect() as conn:
        row = conn.execute(sa.select(incidents).where(incidents.c.incident_id == created["incident_id"])).one()
        alerts = [{**alert, "url": f"{prefix}{alert['alert_id']}"} for alert in store.linked_alerts(conn, row.id)]
    document = documents.incident_document(row, alerts)
    written = store.linked_alerts_json(row.id, prefix)
    expected = documents.AlertsJson.of(alerts)
    assert (json.loads(written.alerts), json.loads(written.alert_ids)) == (
        json.loads(expected.alerts), json.loads(expected.alert_ids))
    spliced = documents.incident_json_text(documents.incident_document(row), written)
    whole = documents.incident_json(document)
    assert json.loads(spliced) == whole == json.loads(documents.incident_json_text(document))
    assert list(json.loads(spliced)) == list(schemas.IncidentSchema().dump(document)), "fields in the schema's order"


def test_alerts_texts_keep_the_links_order_however_they_were_stored(app, create_incident, clock):
    """The alerts' texts follow `linked_at`, then the alert id, for links stored in another order
    (PostgreSQL sorts them once, in a subquery, for both texts); an incident without links has two
    empty arrays."""
    clock.set(T0)
    bare = create_incident()
    linked = create_incident()
    links = [{"alert_id": uuid.uuid4(), "linked_at": T0 + timedelta(seconds=i % 7, microseconds=i)} for i in range(300)]
    links += [{"alert_id": uuid.uuid4(), "linked_at": T0} for _ in range(20)]  # ties: by alert id
    store = app.extensions["store"]
    engine = app.extensions["engine"]
    with engine.begin() as conn:
        pks = {row.incident_id: row.id for row in conn.execute(sa.select(incidents.c.incident_id, incidents.c.id))}
        rows = [{"incident_id": pks[linked["incident_id"]], **link} for link in links]
        conn.execute(incident_alerts.insert(), sorted(rows, key=lambda row: str(row["alert_id"]), reverse=True))
    written = store.linked_alerts_json(pks[linked["incident_id"]], "u/")
    in_order = sorted(links, key=lambda link: (link["linked_at"], link["alert_id"]))
    assert json.loads(written.alert_ids) == [str(link["alert_id"]) for link in in_order]
    assert [alert["alert_id"] for alert in json.loads(written.alerts)] == json.loads(written.alert_ids)
    assert json.loads(written.alerts)[0] == {"alert_id": str(in_order[0]["alert_id"]),
                                             "linked_at": documents.rfc3339(T0), "url": f"u/{in_order[0]['alert_id']}"}
    empty = store.linked_alerts_json(pks[bare["incident_id"]], "u/")
    assert (empty.alerts, empty.alert_ids) == ("[]", "[]")


def test_alert_reads_of_the_moment_share_one_statement_each_caller_its_own_texts(app, create_incident, clock):
    """PostgreSQL: the grouped answers' alert reads queued behind one in progress share the next
    statement, an incident asked for twice read once, and every caller gets its own incident's
    texts (SQLite reads each alone)."""
    engine: sa.Engine = app.extensions["engine"]
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgresStore's group commit of reads")
    clock.set(T0)
    created = [create_incident(alert_ids=[str(uuid.uuid4()) for _ in range(n)]) for n in (0, 1, 3)]
    with engine.connect() as conn:
        pks = [conn.execute(sa.select(incidents.c.id).where(incidents.c.incident_id == c["incident_id"])).scalar_one()
               for c in created]
    store = app.extensions["store"]
    reads: list[list] = []
    reading, release = threading.Event(), threading.Event()

    def hold_the_first(conn, cursor, statement, parameters, context, executemany) -> None:
        # The prepared read (EXECUTE) is the one statement here given a list: the incidents' ids.
        listed = [value for value in (parameters or {}).values() if isinstance(value, list)]
        if statement.startswith("EXECUTE") and listed:
            reads.append(sorted(map(str, listed[0])))
            if len(reads) == 1:
                reading.set()
                assert release.wait(10)

    sa.event.listen(engine, "before_cursor_execute", hold_the_first)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            first = pool.submit(store.linked_alerts_json, pks[0], "u/")
            assert reading.wait(10)
            asked = [pks[1], pks[2], pks[1], pks[0], pks[2]]
            queued = []
            for count, pk in enumerate(asked, start=1):
                queued.append(pool.submit(store.linked_alerts_json, pk, "u/"))
                assert wait_until(lambda count=count: store._alert_reads.waiting() == count, timeout=10)
            release.set()
            answers = [first.result(10), *(future.result(10) for future in queued)]
    finally:
        sa.event.remove(engine, "before_cursor_execute", hold_the_first)
    assert reads == [[str(pks[0])], sorted(map(str, pks))], "the queued five in one statement, each incident once"
    wanted = [created[i] for i in (0, 1, 2, 1, 0, 2)]
    assert [json.loads(a.alert_ids) for a in answers] == [c["alert_ids"] for c in wanted]
    assert [json.loads(a.alerts) for a in answers] == [
        [{**alert, "url": f"u/{alert['alert_id']}"} for alert in c["alerts"]] for c in wanted]
