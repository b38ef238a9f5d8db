"""What the hot paths send to PostgreSQL. Each statement is a round trip, and round trips are most of
what a request costs (README, Performance): a change that adds one to a hot path shows up here.
Over 300 lines: every hot path in one place, so that such a change cannot hide in another file."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from incident_app import tables
from incident_app.repository import events, platform_alerts
from incident_app.repository import incidents as repo
from incident_app.repository import outbox as outbox_queue
from incident_app.repository.first_contacts import FirstContact
from incident_app.statements import Bound, execute_together
from incident_app.tables import incident_events
from incident_app.transactions import single_statement, transaction

postgresql_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
pytestmark = postgresql_only

NEW = {"title": "Checkout errors", "service": "payments", "severity": "high"}


@pytest.fixture
def sent(app, monkeypatch) -> Iterator[list[tuple[str, bool]]]:
    """(first keyword of each statement, whether it committed by itself), as the app sends them.

    psycopg2 sends BEGIN and COMMIT itself around the statements of a transaction (autocommit off).
    The platform's alerts table, which reads of linked alerts look up once a minute, is looked up
    before and not again during the test: a lookup falling due would add a SELECT to what it counts.
    """
    seen: list[tuple[str, bool]] = []
    monkeypatch.setattr(platform_alerts, "TABLE_TTL", math.inf)
    platform_alerts.forget_table()
    app.extensions["store"].new_links(uuid.uuid4(), [uuid.uuid4()], datetime.now(UTC))  # looks the table up

    def record(conn, _cursor, statement, *_args) -> None:
        seen.append((statement.split(None, 1)[0].upper(), conn.connection.dbapi_connection.autocommit))

    engine = app.extensions["engine"]
    sa.event.listen(engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(engine, "before_cursor_execute", record)


def executed(sent: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """What `sent` recorded less the PREPAREs, each sent once per connection, before the connection's
    first EXECUTE of that statement (prepared.execute_prepared)."""
    assert all(autocommit for keyword, autocommit in sent if keyword == "PREPARE")
    return [statement for statement in sent if statement[0] != "PREPARE"]


def test_create_is_two_statements_each_committing_by_itself(client, sent, oncall, notifier):
    body = {**NEW, "alert_ids": ["5b1c0a52-8f6e-4c61-9d2a-0c8f7e3b2a10"]}
    created = client.post("/api/v1/incidents", json=body)
    assert created.status_code == 201
    assert created.json["assigned_to"] == "alice@example.com"
    # The incident with its link, timeline and notification; then assignment and delivery together
    # (both prepared: the same shape for any number of creates).
    assert executed(sent) == [("EXECUTE", True), ("EXECUTE", True)]
    events = [e["type"] for e in client.get(f"/api/v1/incidents/{created.json['incident_id']}/events").json["events"]]
    assert events == ["created", "alerts_linked", "assigned", "notified"]


def test_create_without_anyone_on_call_is_two_statements(client, sent, oncall, notifier):
    oncall.respond(404, {"code": 404, "status": "Not Found", "message": "no schedule"})
    created = client.post("/api/v1/incidents", json=NEW)
    assert (created.status_code, created.json["assigned_to"]) == (201, None)
    assert executed(sent) == [("EXECUTE", True), ("EXECUTE", True)]


def test_hot_paths_are_compiled_once_and_then_taken_from_sqlalchemys_cache(app, client, oncall, notifier):
    """A statement SQLAlchemy cannot cache (a multi-row VALUES, say) is compiled on every request:
    that was a third of a create's time."""
    hits: list[str] = []

    def record(_conn, _cursor, _statement, _parameters, context, _executemany) -> None:
        hits.append(str(context.cache_hit).rsplit(".", 1)[-1])

    def exercise() -> None:
        body = {**NEW, "alert_ids": ["5b1c0a52-8f6e-4c61-9d2a-0c8f7e3b2a10"]}
        incident_id = client.post("/api/v1/incidents", json=body).json["incident_id"]
        client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "acknowledged", "note": "on it"})
        client.patch(f"/api/v1/incidents/{incident_id}", json={"note": "rolled back"})
        client.get(f"/api/v1/incidents/{incident_id}")
        client.get("/api/v1/incidents?status=acknowledged")

    exercise()  # compiles each statement once
    engine = app.extensions["engine"]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        exercise()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert hits and set(hits) == {"CACHE_HIT"}


def test_get_one_is_one_statement_outside_any_transaction(client, sent):
    incident_id = client.post("/api/v1/incidents", json=NEW).json["incident_id"]
    for _ in range(3):
        sent.clear()
        assert client.get(f"/api/v1/incidents/{incident_id}").status_code == 200
        assert executed(sent) == [("EXECUTE", True)]


# A list with two filters or more is planned for its values each time (PostgresStore.page).
@pytest.mark.parametrize(("query", "keyword"), [
    ("", "EXECUTE"), ("?status=open", "EXECUTE"), ("?service=payments&offset=1", "EXECUTE"),
    ("?severity=high&service=payments&offset=1", "SELECT"),
])
def test_list_page_and_total_are_one_statement(client, sent, query, keyword):
    for _ in range(3):
        client.post("/api/v1/incidents", json=NEW)
    sent.clear()
    page = client.get(f"/api/v1/incidents{query}")
    assert page.status_code == 200
    assert executed(sent) == [(keyword, True)]


def test_acknowledge_of_an_open_incident_is_one_statement(client, sent):
    alert_id = "5b1c0a52-8f6e-4c61-9d2a-0c8f7e3b2a10"
    created = client.post("/api/v1/incidents", json={**NEW, "alert_ids": [alert_id]}).json
    sent.clear()
    acknowledged = client.patch(f"/api/v1/incidents/{created['incident_id']}",
                                json={"status": "acknowledged", "author": "alice"})
    assert acknowledged.status_code == 200
    # The conditional UPDATE, its event and the read of its alerts: one prepared statement, no transaction.
    assert executed(sent) == [("EXECUTE", True)]
    body = acknowledged.json
    assert (body["status"], body["alert_ids"]) == ("acknowledged", [alert_id])
    assert body["acknowledged_at"] == body["updated_at"] is not None
    assert body == client.get(f"/api/v1/incidents/{created['incident_id']}").json
    timeline = client.get(f"/api/v1/incidents/{created['incident_id']}/events").json["events"]
    assert [(e["type"], e["actor"], e["details"]) for e in timeline if e["type"] == "acknowledged"] == [
        ("acknowledged", "alice", {"from": "open"})]


def test_acknowledge_with_a_note_reads_then_writes_row_and_events_in_one_statement(client, sent):
    incident_id = client.post("/api/v1/incidents", json=NEW).json["incident_id"]
    sent.clear()
    acknowledged = client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "acknowledged", "note": "on it"})
    assert acknowledged.json["status"] == "acknowledged"
    # No transaction: the incident with its alerts, then the UPDATE (if what it touches is still as
    # read) with its timeline events as a CTE, each a prepared statement committing by itself.
    assert executed(sent) == [("EXECUTE", True), ("EXECUTE", True)]


def test_same_status_again_tries_the_acknowledge_then_reads_and_writes_nothing(client, sent):
    incident_id = client.post("/api/v1/incidents", json=NEW).json["incident_id"]
    first = client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "acknowledged"}).json
    sent.clear()
    again = client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "acknowledged"})
    assert (again.status_code, again.json) == (200, first)
    # The one-statement acknowledge changes nothing; the read finds it acknowledged already.
    assert executed(sent) == [("EXECUTE", True), ("EXECUTE", True)]
    types = [e["type"] for e in client.get(f"/api/v1/incidents/{incident_id}/events").json["events"]]
    assert types.count("acknowledged") == 1


def test_acknowledge_of_a_resolved_incident_falls_back_to_the_same_400(client, sent):
    incident_id = client.post("/api/v1/incidents", json=NEW).json["incident_id"]
    client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "resolved"})
    sent.clear()
    refused = client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "acknowledged"})
    assert refused.status_code == 400
    assert "resolved" in refused.json["message"] and "acknowledged" in refused.json["message"]
    assert executed(sent) == [("EXECUTE", True), ("EXECUTE", True)]


def test_acknowledge_of_an_unknown_incident_falls_back_to_the_same_404(client, sent):
    missing = client.patch("/api/v1/incidents/inc-0123456789abcdef", json={"status": "acknowledged"})
    assert missing.status_code == 404
    assert executed(sent) == [("EXECUTE", True), ("EXECUTE", True)]
    sent.clear()
    impossible = client.patch("/api/v1/incidents/not-an-id", json={"status": "acknowledged"})
    assert impossible.status_code == 404 and sent == []  # an id that cannot exist is not looked up


def test_a_transaction_only_leaves_autocommit_so_psycopg2_sends_no_set_before_it(app):
    """Changing psycopg2's isolation level (SQLAlchemy's isolation_level option) makes it send
    `SET default_transaction_isolation TO DEFAULT` before the next transaction: a round trip more on
    every write. `transaction` only turns autocommit off, at the session's READ COMMITTED, so psycopg2
    keeps no level of its own (None) and sends BEGIN, the statements, COMMIT."""
    engine = app.extensions["engine"]
    for _ in range(2):  # the pooled connection has run transactions before
        with transaction(engine, write=True) as conn:
            conn.exec_driver_sql("SELECT 1")
    with transaction(engine, write=True) as conn:
        psycopg = conn.connection.dbapi_connection
        assert (psycopg.autocommit, psycopg.isolation_level) == (False, None)
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
    assert (psycopg.autocommit, psycopg.isolation_level) == (True, None)


def test_hot_paths_run_statements_built_once(app, client, oncall, notifier):
    """Building a statement around its values, then computing its cache key, cost a create 1.1 ms of
    its 6: the hot paths run statements built once per shape, their values bound (statements.Bound)."""
    engine = app.extensions["engine"]

    def statements() -> list[object]:
        executed: list[object] = []

        def record(_conn, clauseelement, *_args) -> None:
            executed.append(clauseelement)

        sa.event.listen(engine, "before_execute", record)
        try:
            for alerts in ([], ["5b1c0a52-8f6e-4c61-9d2a-0c8f7e3b2a10"],
                           ["0e7f8a3c-1d2b-4c5e-8f9a-0b1c2d3e4f50", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"]):
                incident_id = client.post("/api/v1/incidents", json={**NEW, "alert_ids": alerts}).json["incident_id"]
                client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "acknowledged", "note": "on it"})
                client.patch(f"/api/v1/incidents/{incident_id}", json={"note": "rolled back"})
                client.get(f"/api/v1/incidents/{incident_id}")
            client.get("/api/v1/incidents?status=acknowledged")
        finally:
            sa.event.remove(engine, "before_execute", record)
        return executed

    statements()  # the first use of each shape builds it (and looks the platform's alerts table up)
    first, second = statements(), statements()
    assert len(first) == len(second) >= 3 * 6 + 1
    assert [id(s) for s in first] == [id(s) for s in second]


def test_statements_run_together_may_not_share_a_parameter_name(app):
    insert = incident_events.insert().values(type=sa.bindparam("type"))
    with single_statement(app.extensions["engine"]) as conn, pytest.raises(ValueError, match="share a parameter"):
        execute_together(conn, Bound(sa.select(sa.bindparam("type")), {"type": "a"}), Bound(insert, {"type": "b"}))


def test_first_contacts_of_several_creates_are_recorded_in_one_statement(app, client, sent, oncall, notifier):
    """The group commit's statement (first_contacts.record_many), for several incidents at once: each
    gets its own assignee and events, and one assigned meanwhile keeps its assignee."""
    oncall.respond(404, {"code": 404, "status": "Not Found", "message": "no schedule"})
    notifier.respond(503, {"error": "down"})  # the notifications stay pending, to be delivered below
    ids = [client.post("/api/v1/incidents", json={**NEW, "title": f"storm {i}"}).json["incident_id"] for i in range(3)]
    assert client.patch(f"/api/v1/incidents/{ids[2]}", json={"assigned_to": "carol"}).status_code == 200
    engine = app.extensions["engine"]
    with engine.connect() as conn:
        incidents = {row.incident_id: row for row in conn.execute(
            sa.select(tables.incidents).where(tables.incidents.c.incident_id.in_(ids)))}
        outbox = tables.notification_outbox
        ours = outbox.c.incident_id.in_([row.id for row in incidents.values()])
        pending = {row.incident_id: row for row in conn.execute(sa.select(outbox).where(ours))}
    now = datetime.now(UTC)
    contacts = []
    for incident_id in ids:
        notification = pending[incidents[incident_id].id]
        contacts.append(FirstContact(
            incident_pk=incidents[incident_id].id, assignee="alice@example.com", assigned_at=now,
            notification_id=notification.id, attempts=2,
            payload={**notification.payload, "engineer": "alice@example.com"},
            notified={"attempt": 2, "marker": incident_id}, sent_at=now,
        ))
    sent.clear()
    recorded = app.extensions["store"].record_first_contacts(contacts)
    assert executed(sent) == [("EXECUTE", True)]
    assert [row.assigned_to if row else None for row in recorded] == ["alice@example.com"] * 2 + [None]
    for incident_id, expected in zip(ids, ["alice@example.com", "alice@example.com", "carol"], strict=True):
        assert client.get(f"/api/v1/incidents/{incident_id}").json["assigned_to"] == expected
        timeline = client.get(f"/api/v1/incidents/{incident_id}/events").json["events"]
        assigned = [e["details"] for e in timeline if e["type"] == "assigned"]
        assert assigned == ([{"assigned_to": "alice@example.com"}] if expected != "carol" else [])
        assert [e["details"] for e in timeline if e["type"] == "notified"] == [{"attempt": 2, "marker": incident_id}]
    with engine.connect() as conn:
        delivered = conn.execute(sa.select(outbox).where(ours)).all()
    states = [(row.state, row.attempts, row.payload["engineer"]) for row in delivered]
    assert states == [("sent", 2, "alice@example.com")] * 3


def new_incident(i: int, alert_count: int, dedup_key: str | None = None) -> repo.NewIncident:
    """A create's rows as the flow makes them: `inc-<i>`, with `alert_count` alerts and payload {"n": i}."""
    now = datetime.now(UTC)
    pk, alert_ids = uuid.uuid4(), [uuid.uuid4() for _ in range(alert_count)]
    values = {**NEW, "title": f"storm {i}", "id": pk, "incident_id": f"inc-{i:016x}", "status": "open",
              "notes": [], "created_at": now, "updated_at": now, "dedup_key": dedup_key}
    timeline = [events.event(pk, "created", at=now, details={"title": values["title"]})]
    if alert_ids:
        linked = {"alert_ids": [str(a) for a in alert_ids]}
        timeline.append(events.event(pk, "alerts_linked", at=now, details=linked))
    notification = outbox_queue.new_row(notification_id=uuid.uuid4(), incident_pk=pk, payload={"n": i}, now=now,
                                        first_attempt_at=now)
    return repo.NewIncident(values, repo.links(pk, alert_ids, now), timeline, notification)


def test_a_batch_with_taken_dedup_keys_stores_the_others_in_one_statement(app, client, sent):
    """A key an unresolved incident has, or one an earlier row of the same batch takes, skips only
    that create (None): nothing of it is written, and every other create of the batch is stored."""
    existing = client.post("/api/v1/incidents", json={**NEW, "dedup_key": "taken"}).json
    keys = ["taken", "a", None, "a", "b", "taken", None]
    new = [new_incident(i, 2, key) for i, key in enumerate(keys)]
    sent.clear()
    rows = app.extensions["store"].insert_many(new)
    assert executed(sent) == [("EXECUTE", True)]
    assert [row.incident_id if row else None for row in rows] == [
        None, "inc-0000000000000001", "inc-0000000000000002", None, "inc-0000000000000004", None,
        "inc-0000000000000006",
    ]
    skipped = [incident.values["id"] for incident, row in zip(new, rows, strict=True) if row is None]
    engine = app.extensions["engine"]
    with engine.connect() as conn:
        for table in (tables.incidents, tables.incident_alerts, tables.incident_events, tables.notification_outbox):
            pk = table.c.id if table is tables.incidents else table.c.incident_id
            assert conn.execute(sa.select(sa.func.count()).where(pk.in_(skipped))).scalar_one() == 0, table.name
    for row in filter(None, rows):
        timeline = client.get(f"/api/v1/incidents/{row.incident_id}/events").json["events"]
        assert [e["type"] for e in timeline] == ["created", "alerts_linked"]
        assert len(client.get(f"/api/v1/incidents/{row.incident_id}").json["alert_ids"]) == 2
    assert client.get("/api/v1/incidents?dedup_key=taken").json["incidents"][0]["incident_id"] == (
        existing["incident_id"])


def test_grouped_create_is_one_statement_then_its_alerts_read(client, sent, oncall, notifier):
    """Counted with its links and event in one prepared statement that commits by itself (the
    incident's row is locked for that statement alone), then the incident's alerts read for the
    answer, as the JSON texts PostgreSQL writes (prepared too)."""
    client.post("/api/v1/incidents", json={**NEW, "dedup_key": "k"})
    sent.clear()
    grouped = client.post("/api/v1/incidents", json={**NEW, "dedup_key": "k", "alert_ids": [str(uuid.uuid4())]})
    assert grouped.status_code == 200
    assert executed(sent) == [("EXECUTE", True), ("EXECUTE", True)]


def test_first_create_of_a_key_tries_to_group_then_inserts(client, sent, oncall, notifier):
    """The grouping finds no incident (one prepared statement, nothing written); then the create as
    without a key."""
    without_key = client.post("/api/v1/incidents", json=NEW)
    first_of_key = executed(sent)
    sent.clear()
    assert without_key.status_code == 201
    assert client.post("/api/v1/incidents", json={**NEW, "dedup_key": "k"}).status_code == 201
    assert executed(sent) == [("EXECUTE", True), *first_of_key]


def test_new_incidents_of_several_creates_are_stored_in_one_statement(app, client, sent):
    """The group commit's first statement (incidents.insert_many), for several incidents:
    each with its own links, timeline (in order) and notification."""
    new = [new_incident(i, alert_count) for i, alert_count in enumerate((0, 1, 3))]
    sent.clear()
    rows = app.extensions["store"].insert_many(new)
    assert executed(sent) == [("EXECUTE", True)]
    assert [row.incident_id for row in rows] == [f"inc-{i:016x}" for i in range(3)]
    for incident, row in zip(new, rows, strict=True):
        document = client.get(f"/api/v1/incidents/{row.incident_id}").json
        assert (document["title"], document["status"]) == (incident.values["title"], "open")
        assert document["description"] is None  # a column a create leaves out is null
        linked = sorted(str(link["alert_id"]) for link in incident.links)
        assert sorted(alert["alert_id"] for alert in document["alerts"]) == linked
        timeline = client.get(f"/api/v1/incidents/{row.incident_id}/events").json["events"]
        assert [e["type"] for e in timeline] == [e["type"] for e in incident.timeline]
    outbox = tables.notification_outbox
    with app.extensions["engine"].connect() as conn:
        payloads = conn.execute(sa.select(outbox.c.payload).where(outbox.c.incident_id.in_([r.id for r in rows])))
        assert sorted(payload["n"] for payload in payloads.scalars()) == [0, 1, 2]
