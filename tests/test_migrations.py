"""Migrations: an empty database of either dialect reaches the schema of tables.py, once, even when
several replicas upgrade at the same time; the `flask db upgrade` CLI does the same.

One file past 300 lines: every revision's upgrade and downgrade, on both dialects, is one
behaviour (the chain), and its cases share the schema comparison."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from incident_app import migrate
from incident_app.db import create_engine
from incident_app.feed.notifier import NOTICE
from incident_app.repository.analytics import AnalyticsFilters, incident_analytics
from incident_app.settings import Settings
from incident_app.tables import SCHEMA, made_on, metadata
from incident_app.transactions import transaction
from tests.test_analytics_days import buckets_kept_and_recomputed, kept_and_recomputed
from tests.test_feed_notify import Listener

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DIALECTS = ("sqlite", "postgresql")
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def empty_database(request, tmp_path) -> str:
    """The URL of an empty database of the dialect the test is parametrized with."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_database")()


by_dialect = pytest.mark.parametrize("empty_database", DIALECTS, indirect=True)
postgresql_only = pytest.mark.parametrize("empty_database", ["postgresql"], indirect=True)


def at_revision(url: str, revision: str) -> tuple[Settings, sa.Engine]:
    """The database upgraded to `revision` only: its settings, and an engine on it."""
    settings = Settings(database_url=url)
    command.upgrade(migrate.alembic_config(settings), revision)
    return settings, create_engine(settings)


def upgraded(url: str) -> sa.Engine:
    migrate.upgrade(Settings(database_url=url))
    return create_engine(Settings(database_url=url))


def our_schema(engine: sa.Engine) -> str | None:
    return SCHEMA if engine.dialect.name == "postgresql" else None


def _index(index: dict[str, Any]) -> str:
    # A partial index's predicate comes back as a TextClause, whose repr differs per object.
    options = {name: str(value) for name, value in index.get("dialect_options", {}).items()}
    return str({**index, "dialect_options": options})


def schema_snapshot(engine: sa.Engine) -> dict[str, Any]:
    """Everything a migration decides, as the database reports it."""
    schema = our_schema(engine)
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        snapshot: dict[str, Any] = {"revision": migrate.current_revision(conn)}
        for table in sorted(inspector.get_table_names(schema=schema)):
            snapshot[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in
                    inspector.get_columns(table, schema=schema)
                ],
                "pk": inspector.get_pk_constraint(table, schema=schema),
                "fks": sorted(str(fk) for fk in inspector.get_foreign_keys(table, schema=schema)),
                "indexes": sorted(_index(ix) for ix in inspector.get_indexes(table, schema=schema)),
                "uniques": sorted(str(u) for u in inspector.get_unique_constraints(table, schema=schema)),
            }
        if schema:
            snapshot["enums"] = sorted(str(e) for e in inspector.get_enums(schema=schema))
        snapshot["triggers"] = triggers_on_incidents(conn)
    return snapshot


def triggers_on_incidents(conn: sa.Connection) -> dict[str, str]:
    """Name → definition of the triggers on incidents (they keep incident_counts, see migration 0003)."""
    if conn.dialect.name == "postgresql":
        query = (
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
            f" WHERE tgrelid = '{SCHEMA}.incidents'::regclass AND NOT tgisinternal"
        )
    else:
        query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'incidents'"
    return dict(conn.exec_driver_sql(query).all())


# --------------------------------------------------------------------------- from empty to head


@by_dialect
def test_upgrade_from_empty_reaches_head(empty_database):
    engine = upgraded(empty_database)
    try:
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
            assert migrate.is_current(conn)
            tables = set(sa.inspect(conn).get_table_names(schema=our_schema(engine)))
        assert {"incidents", "incident_alerts"} <= tables
        made = {t.name for t in metadata.sorted_tables if made_on(t, engine.dialect.name)}
        assert tables - {"alembic_version"} == made
    finally:
        engine.dispose()


@postgresql_only
def test_postgresql_schema_enums_jsonb_and_indexes(empty_database):
    engine = upgraded(empty_database)
    try:
        with engine.connect() as conn:
            enums = conn.execute(sa.text(
                "SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)"
                " FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid"
                " JOIN pg_namespace n ON n.oid = t.typnamespace"
                " WHERE n.nspname = :schema GROUP BY t.typname"
            ), {"schema": SCHEMA}).all()
            columns = dict(conn.execute(sa.text(
                "SELECT column_name, udt_name FROM information_schema.columns"
                " WHERE table_schema = :schema AND table_name = 'incidents'"
            ), {"schema": SCHEMA}).all())
            alert_columns = dict(conn.execute(sa.text(
                "SELECT column_name, udt_name FROM information_schema.columns"
                " WHERE table_schema = :schema AND table_name = 'incident_alerts'"
            ), {"schema": SCHEMA}).all())
            indexes = dict(conn.execute(sa.text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :schema"
            ), {"schema": SCHEMA}).all())
            fks = sa.inspect(conn).get_foreign_keys("incident_alerts", schema=SCHEMA)
            version_schema = conn.execute(sa.text(
                "SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'"
            )).scalars().all()
    finally:
        engine.dispose()

    assert dict(enums) == {
        "severity_level": ["critical", "high", "medium", "low"],
        "incident_status": ["open", "acknowledged", "resolved"],
    }
    assert {name: columns[name] for name in (
        "id", "incident_id", "title", "description", "service", "severity", "status", "assigned_to", "notes",
        "created_at", "acknowledged_at", "resolved_at", "updated_at",
    )} == {
        "id": "uuid", "incident_id": "varchar", "title": "varchar", "description": "text", "service": "varchar",
        "severity": "severity_level", "status": "incident_status", "assigned_to": "varchar", "notes": "jsonb",
        "created_at": "timestamptz", "acknowledged_at": "timestamptz", "resolved_at": "timestamptz",
        "updated_at": "timestamptz",
    }
    assert alert_columns == {"incident_id": "uuid", "alert_id": "uuid", "linked_at": "timestamptz"}
    assert [(fk["referred_schema"], fk["referred_table"], fk["options"].get("ondelete")) for fk in fks] == [
        (SCHEMA, "incidents", "CASCADE")
    ]
    assert version_schema == [SCHEMA]  # other services' migrations keep their own version tables
    # Newest-first listing, alone and behind each filter, and links by alert.
    assert "(created_at DESC, incident_id DESC)" in indexes["ix_incidents_created_at"]
    for column in ("status", "severity", "service"):
        assert f"({column}, created_at DESC, incident_id DESC)" in indexes[f"ix_incidents_{column}_created_at"]
    assert "(alert_id)" in indexes["ix_incident_alerts_alert_id"]
    assert "UNIQUE" in indexes["uq_incidents_incident_id"]


@postgresql_only
def test_postgresql_defaults_fill_status_and_notes(empty_database):
    engine = upgraded(empty_database)
    try:
        with transaction(engine) as conn:
            conn.execute(sa.text(
                f"INSERT INTO {SCHEMA}.incidents (id, incident_id, title, service, severity, created_at, updated_at)"
                " VALUES (gen_random_uuid(), 'inc-0000000000000001', 't', 's', 'low', now(), now())"
            ))
            status, notes = conn.execute(sa.text(f"SELECT status, notes FROM {SCHEMA}.incidents")).one()
            with pytest.raises(sa.exc.DataError), conn.begin_nested():
                conn.execute(sa.text(f"UPDATE {SCHEMA}.incidents SET severity = 'urgent'"))
    finally:
        engine.dispose()
    assert (status, notes) == ("open", [])


# The tables kept by triggers on incidents, with the columns whose change SQLite's update trigger watches.
KEPT_BY_TRIGGERS = {
    "incident_counts": "service, severity, status",  # 0003
    "incident_days": "created_at, service, severity, status, acknowledged_at, resolved_at",  # 0011
    "incident_duration_buckets": None,  # 0012, PostgreSQL only
}


@pytest.mark.parametrize("kept", list(KEPT_BY_TRIGGERS))
@by_dialect
def test_derived_tables_are_kept_by_triggers_on_incidents(empty_database, kept):
    engine = upgraded(empty_database)
    try:
        with engine.connect() as conn:
            triggers = {name: d for name, d in triggers_on_incidents(conn).items() if name.startswith(f"{kept}_")}
    finally:
        engine.dispose()
    if engine.dialect.name == "sqlite" and KEPT_BY_TRIGGERS[kept] is None:
        assert triggers == {}
        return
    if engine.dialect.name == "sqlite":
        # Row-level, SQLite has no other kind; an update counts only when a counted column changes.
        assert sorted(triggers) == [f"{kept}_after_{e}" for e in ("delete", "insert", "update")]
        assert "AFTER INSERT ON incidents" in triggers[f"{kept}_after_insert"]
        assert f"AFTER UPDATE OF {KEPT_BY_TRIGGERS[kept]} ON incidents" in triggers[f"{kept}_after_update"]
        assert "AFTER DELETE ON incidents" in triggers[f"{kept}_after_delete"]
        return
    # Statement-level with transition tables: one grouped upsert per statement, however many rows.
    for event, referencing in (
        ("INSERT", "REFERENCING NEW TABLE AS new_rows"),
        ("UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "REFERENCING OLD TABLE AS old_rows"),
    ):
        definition = triggers.pop(f"{kept}_after_{event.lower()}")
        assert f"AFTER {event} ON {SCHEMA}.incidents {referencing} FOR EACH STATEMENT" in definition
    # TRUNCATE fires no DELETE trigger: its own trigger empties the table.
    assert list(triggers) == [f"{kept}_after_truncate"]


# --------------------------------------------------------------------------- no drift from tables.py


def _sqlite_metadata() -> sa.MetaData:
    """tables.py without its schema: on SQLite the engine maps `incidents` to the main database."""
    flat = sa.MetaData()
    for table in metadata.sorted_tables:
        if made_on(table, "sqlite"):
            copy = table.to_metadata(flat, schema=None, referred_schema_fn=lambda *_: sa.BLANK_SCHEMA)
            absent = {index.name for index in table.indexes if not made_on(index, "sqlite")}
            copy.indexes -= {index for index in copy.indexes if index.name in absent}
    return flat


def _include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    return name in (SCHEMA, None) if type_ == "schema" else True


@by_dialect
def test_migrations_and_tables_py_do_not_drift(empty_database):
    engine = upgraded(empty_database)
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_schemas": postgres,
                "include_name": _include_name,
                "version_table_schema": SCHEMA if postgres else None,
            })
            differences = compare_metadata(context, metadata if postgres else _sqlite_metadata())
    finally:
        engine.dispose()
    assert differences == []


# --------------------------------------------------------------------------- upgrading again


@by_dialect
def test_upgrading_twice_changes_nothing(empty_database):
    engine = upgraded(empty_database)
    try:
        before = schema_snapshot(engine)
        with engine.begin() as conn:
            conn.execute(metadata.tables[f"{SCHEMA}.incidents"].insert().values(
                id=uuid.UUID(int=1), incident_id="inc-0000000000000001", title="kept", service="api",
                severity="low", status="open", notes=[], created_at=NOW, updated_at=NOW,
            ))
        migrate.upgrade(Settings(database_url=empty_database))
        after = schema_snapshot(engine)
        with engine.connect() as conn:
            titles = conn.execute(sa.select(metadata.tables[f"{SCHEMA}.incidents"].c.title)).scalars().all()
    finally:
        engine.dispose()
    assert after == before
    assert titles == ["kept"]


# --------------------------------------------------------------------------- 0004: notes with id and content

OLD_NOTES = [
    {"text": "rolled back", "author": "bob", "created_at": "2026-11-26T10:04:00.000001+00:00"},
    {"text": "Escalated to level 1", "author": "system", "created_at": "2026-11-26T10:05:00+00:00"},
]


def _rows_at_0003(engine: sa.Engine) -> None:
    """Incidents and note_added events as the service wrote them before 0004: one with two notes
    (and their events), one without notes but with an event whose note was removed by hand."""
    incidents = metadata.tables[f"{SCHEMA}.incidents"]
    events = metadata.tables[f"{SCHEMA}.incident_events"]
    with engine.begin() as conn:
        for n, notes in ((1, OLD_NOTES), (2, [])):
            conn.execute(incidents.insert().values(
                id=uuid.UUID(int=n), incident_id=f"inc-000000000000000{n}", title="t", service="api",
                severity="low", status="open", notes=notes, created_at=NOW, updated_at=NOW,
            ))
        conn.execute(events.insert(), [
            {"incident_id": uuid.UUID(int=1), "type": "created", "details": {"title": "t"}, "created_at": NOW},
            *({"incident_id": uuid.UUID(int=1), "type": "note_added", "actor": note["author"],
               "details": {"text": note["text"]}, "created_at": NOW} for note in OLD_NOTES),
            {"incident_id": uuid.UUID(int=2), "type": "note_added", "details": {"text": "orphan"}, "created_at": NOW},
        ])


def _notes_and_events(engine: sa.Engine) -> tuple[dict[int, list], list[tuple[int, str, dict]]]:
    incidents = metadata.tables[f"{SCHEMA}.incidents"]
    events = metadata.tables[f"{SCHEMA}.incident_events"]
    with engine.connect() as conn:
        notes = {row.id.int: row.notes for row in conn.execute(sa.select(incidents.c.id, incidents.c.notes))}
        timeline = [(row.incident_id.int, row.type, row.details) for row in conn.execute(
            sa.select(events.c.incident_id, events.c.type, events.c.details).order_by(events.c.id))]
    return notes, timeline


@by_dialect
def test_0004_gives_stored_notes_an_id_and_content_and_their_events_the_note(empty_database):
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings, "0003")
    engine = create_engine(settings)
    try:
        _rows_at_0003(engine)
        old = _notes_and_events(engine)
        migrate.upgrade(settings, "0004")
        notes, timeline = _notes_and_events(engine)

        assert [note["content"] for note in notes[1]] == ["rolled back", "Escalated to level 1"]
        for new, before in zip(notes[1], OLD_NOTES, strict=True):
            assert set(new) == {"id", "content", "author", "created_at"}
            assert uuid.UUID(new["id"]).version == 4
            assert (new["author"], new["created_at"]) == (before["author"], before["created_at"])
        assert notes[1][0]["id"] != notes[1][1]["id"]
        assert notes[2] == []
        # Each note_added event now carries its note, as stored; one whose note is gone keeps its
        # text under the new name; other events are untouched.
        assert timeline == [
            (1, "created", {"title": "t"}),
            (1, "note_added", notes[1][0]),
            (1, "note_added", notes[1][1]),
            (2, "note_added", {"content": "orphan"}),
        ]

        command.downgrade(migrate.alembic_config(settings), "0003")
        assert _notes_and_events(engine) == old
        migrate.upgrade(settings)  # and up again
        assert [note["content"] for note in _notes_and_events(engine)[0][1]] == ["rolled back", "Escalated to level 1"]
    finally:
        engine.dispose()


@by_dialect
def test_0004_pages_through_more_incidents_than_a_page(empty_database):
    count = 2 * 1000 + 1  # the migration's PAGE: three pages, the last of one row
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings, "0003")
    engine = create_engine(settings)
    incidents = metadata.tables[f"{SCHEMA}.incidents"]
    try:
        with engine.begin() as conn:
            conn.execute(incidents.insert(), [
                {"id": uuid.uuid4(), "incident_id": f"inc-{n:016x}", "title": "t", "service": "api",
                 "severity": "low", "status": "open", "created_at": NOW, "updated_at": NOW,
                 "notes": [{"text": f"note {n}", "author": None, "created_at": "2026-11-26T10:00:00+00:00"}]}
                for n in range(count)
            ])
        migrate.upgrade(settings)
        with engine.connect() as conn:
            notes = conn.execute(sa.select(incidents.c.notes)).scalars().all()
    finally:
        engine.dispose()
    assert sorted(n[0]["content"] for n in notes) == sorted(f"note {n}" for n in range(count))
    assert all(set(n[0]) == {"id", "content", "author", "created_at"} for n in notes)


# --------------------------------------------------------------------------- replicas starting together

_UPGRADE_WHEN_TOLD = """
import sys, time
from pathlib import Path
from incident_app import migrate
from incident_app.settings import Settings

url, ready, go = sys.argv[1:4]
Path(ready).touch()
deadline = time.monotonic() + 60
while not Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.002)
migrate.upgrade(Settings(database_url=url))
"""


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ENVIRONMENT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


@postgresql_only
def test_replicas_upgrading_at_once_all_succeed_with_one_schema(empty_database, pg_database, tmp_path):
    replicas = 3
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _UPGRADE_WHEN_TOLD, empty_database, str(tmp_path / f"ready-{i}"), str(go)],
            cwd=PROJECT_ROOT, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(replicas)
    ]
    try:
        deadline = time.monotonic() + 60
        while sum((tmp_path / f"ready-{i}").exists() for i in range(replicas)) < replicas:
            assert time.monotonic() < deadline, "replicas did not start"
            assert all(c.poll() is None for c in children), [c.communicate() for c in children]
            time.sleep(0.01)
        go.touch()  # every replica is loaded and waiting: release them together
        outcomes = [(c.wait(timeout=120), c.stderr.read()) for c in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [code for code, _ in outcomes] == [0] * replicas, outcomes

    together = create_engine(Settings(database_url=empty_database))
    alone = upgraded(pg_database())
    try:
        with together.connect() as conn:
            versions = conn.execute(sa.text(f"SELECT version_num FROM {SCHEMA}.alembic_version")).scalars().all()
        assert versions == [migrate.head_revision()]
        assert schema_snapshot(together) == schema_snapshot(alone)
    finally:
        together.dispose()
        alone.dispose()


# --------------------------------------------------------------------------- the CLI


@by_dialect
def test_flask_db_upgrade_cli(empty_database):
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=PROJECT_ROOT, env=_child_env(DATABASE_URL=empty_database, LOG_LEVEL="WARNING"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert migrate.head_revision() in result.stdout
    engine = create_engine(Settings(database_url=empty_database))
    try:
        with engine.connect() as conn:
            assert migrate.is_current(conn)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- 0006: alert grouping


@by_dialect
def test_0006_downgrades_to_0005_exactly_and_keeps_the_counts_triggers(empty_database):
    settings = Settings(database_url=empty_database)
    migrate.upgrade(settings, "0005")
    engine = create_engine(settings)
    try:
        at_0005 = schema_snapshot(engine)
        migrate.upgrade(settings)
        at_head = schema_snapshot(engine)
        kept = {name: at_head["triggers"].get(name) for name in at_0005["triggers"]}
        assert kept == at_0005["triggers"], "adding columns keeps the triggers of 0003 and 0005"
        assert {"dedup_key", "grouped_count", "last_grouped_at"} <= {c[0] for c in at_head["incidents"]["columns"]}
        command.downgrade(migrate.alembic_config(settings), "0005")
        assert schema_snapshot(engine) == at_0005
        migrate.upgrade(settings)
        assert schema_snapshot(engine) == at_head
    finally:
        engine.dispose()


@by_dialect
def test_0006_lets_one_unresolved_incident_per_dedup_key_exist(empty_database):
    engine = upgraded(empty_database)
    incidents = metadata.tables[f"{SCHEMA}.incidents"]

    def row(n: int, status: str) -> dict[str, Any]:
        return {"id": uuid.UUID(int=n), "incident_id": f"inc-{n:016x}", "title": "t", "service": "api",
                "severity": "low", "status": status, "created_at": NOW, "updated_at": NOW, "dedup_key": "k"}

    try:
        with transaction(engine, write=True) as conn:
            conn.execute(incidents.insert(), [row(1, "resolved"), row(2, "resolved"), row(3, "acknowledged")])
        with pytest.raises(sa.exc.IntegrityError), transaction(engine, write=True) as conn:
            conn.execute(incidents.insert().values(row(4, "open")))
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- 0008: analytics indexes

ANALYTICS_INDEXES = {"ix_incidents_analytics_window", "ix_incidents_mtta_seconds", "ix_incidents_mttr_seconds"}


def _index_names(engine: sa.Engine) -> set[str]:
    if engine.dialect.name == "postgresql":
        query = f"SELECT indexname FROM pg_indexes WHERE schemaname = '{SCHEMA}' AND tablename = 'incidents'"
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'incidents'"
    with engine.connect() as conn:
        return set(conn.exec_driver_sql(query).scalars())


@by_dialect
def test_0008_indexes_the_incidents_already_there_and_downgrades(empty_database):
    settings, engine = at_revision(empty_database, "0005")
    incidents = metadata.tables[f"{SCHEMA}.incidents"]
    try:
        with engine.begin() as conn:  # written before 0008: MTTA 1.5, 2.5, 10 s; MTTR 100.25 s
            conn.execute(incidents.insert(), [
                {"id": uuid.UUID(int=n), "incident_id": f"inc-{n:016x}", "title": "t", "service": "api",
                 "severity": "low", "status": "resolved" if n == 3 else "acknowledged", "notes": [],
                 "created_at": NOW, "acknowledged_at": NOW + timedelta(seconds=ack),
                 "resolved_at": NOW + timedelta(seconds=100.25) if n == 3 else None, "updated_at": NOW}
                for n, ack in ((1, 1.5), (2, 2.5), (3, 10))
            ])
        assert not ANALYTICS_INDEXES & _index_names(engine)
        migrate.upgrade(settings)
        assert ANALYTICS_INDEXES <= _index_names(engine)
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")  # read through the new indexes
            body = incident_analytics(conn, AnalyticsFilters())
            windowed = incident_analytics(conn, AnalyticsFilters(since=NOW))
        assert body["mtta_percentiles"] == windowed["mtta_percentiles"] == pytest.approx(
            {"p50": 2.5, "p90": 8.5, "p95": 9.25, "p99": 9.85})
        assert body["mttr_percentiles"]["p50"] == windowed["mttr_percentiles"]["p99"] == 100.25

        command.downgrade(migrate.alembic_config(settings), "0005")
        assert not ANALYTICS_INDEXES & _index_names(engine)
        migrate.upgrade(settings)  # and up again
        assert ANALYTICS_INDEXES <= _index_names(engine)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- 0009: webhooks guard


def _deliveries_for_a_new_event(engine: sa.Engine, n: int) -> int:
    """Write incident `n` and one event for it; how many deliveries the event got."""
    tables = metadata.tables
    incidents, events = tables[f"{SCHEMA}.incidents"], tables[f"{SCHEMA}.incident_events"]
    deliveries = tables[f"{SCHEMA}.webhook_deliveries"]
    with engine.begin() as conn:
        conn.execute(incidents.insert().values(
            id=uuid.UUID(int=n), incident_id=f"inc-{n:016x}", title="t", service="api", severity="low",
            status="open", notes=[], created_at=NOW, updated_at=NOW))
        event_id = conn.execute(events.insert().values(
            incident_id=uuid.UUID(int=n), type="note_added", details={}, created_at=NOW)
            .returning(events.c.id)).scalar_one()
        return conn.execute(sa.select(sa.func.count()).where(deliveries.c.event_id == event_id)).scalar_one()


def _enqueue_function(engine: sa.Engine) -> str | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT prosrc FROM pg_proc WHERE oid = '{SCHEMA}.enqueue_webhook_deliveries'"
                                    "::regproc").scalar_one()


@by_dialect
def test_0009_delivers_as_0008_did_with_a_subscription_and_writes_nothing_without_one(empty_database):
    settings, engine = at_revision(empty_database, "0008")
    webhooks = metadata.tables[f"{SCHEMA}.webhooks"]
    postgres = engine.dialect.name == "postgresql"
    try:
        at_0008 = _enqueue_function(engine)
        with engine.begin() as conn:
            conn.execute(webhooks.insert().values(id=uuid.uuid4(), url="http://127.0.0.1:9/hook", secret="whsec_x",
                                                  created_at=NOW))
        assert _deliveries_for_a_new_event(engine, 1) == 1
        migrate.upgrade(settings)
        assert _deliveries_for_a_new_event(engine, 2) == 1, "a subscription still gets every event"
        at_head = _enqueue_function(engine)
        assert ("IF NOT EXISTS" in at_head) if postgres else at_head is None
        with engine.begin() as conn:
            conn.execute(webhooks.delete())
        assert _deliveries_for_a_new_event(engine, 3) == 0
        command.downgrade(migrate.alembic_config(settings), "0008")
        assert _enqueue_function(engine) == at_0008
        assert _deliveries_for_a_new_event(engine, 4) == 0
        migrate.upgrade(settings)  # and up again
        assert _enqueue_function(engine) == at_head
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- 0011: analytics by day


@by_dialect
def test_0011_fills_the_days_from_the_incidents_already_there_and_downgrades(empty_database):
    settings, engine = at_revision(empty_database, "0010")
    incidents = metadata.tables[f"{SCHEMA}.incidents"]
    try:
        with engine.begin() as conn:  # written before 0011, over three days, one at a midnight
            conn.execute(incidents.insert(), [
                {"id": uuid.UUID(int=n), "incident_id": f"inc-{n:016x}", "title": "t", "service": f"svc-{n % 2}",
                 "severity": "low", "status": "acknowledged" if n % 3 else "open", "notes": [],
                 "created_at": NOW + timedelta(hours=14 * n), "updated_at": NOW,
                 "acknowledged_at": NOW + timedelta(hours=14 * n, seconds=n + 0.5) if n % 3 else None}
                for n in range(7)
            ])
        assert not sa.inspect(engine).has_table("incident_days", schema=our_schema(engine))
        migrate.upgrade(settings)
        kept, recomputed = kept_and_recomputed(engine)
        assert kept == recomputed and len({day for day, *_ in kept}) == 4
        with engine.connect() as conn:
            body = incident_analytics(conn, AnalyticsFilters(since=NOW + timedelta(hours=14)))
        assert body["total_incidents"] == 6 and body["avg_mtta_seconds"] == pytest.approx(3.5)  # 1.5, 2.5, 4.5, 5.5

        command.downgrade(migrate.alembic_config(settings), "0010")
        assert not sa.inspect(engine).has_table("incident_days", schema=our_schema(engine))
        with engine.connect() as conn:
            assert not [name for name in triggers_on_incidents(conn) if name.startswith("incident_days")]
        migrate.upgrade(settings)  # and up again
        assert kept_and_recomputed(engine)[0] == recomputed
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- 0012: duration buckets


def _bucket_objects(engine: sa.Engine) -> list[str]:
    """The names of what 0012 makes on PostgreSQL: its functions, table, triggers and indexes."""
    with engine.connect() as conn:
        functions = conn.exec_driver_sql(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'incidents'::regnamespace"
            " AND proname IN ('duration_bucket', 'apply_duration_bucket_deltas')").scalars().all()
        triggers = [name for name in triggers_on_incidents(conn) if name.startswith("incident_duration_buckets")]
        has_table = sa.inspect(conn).has_table("incident_duration_buckets", schema=SCHEMA)
    indexes = {name for name in _index_names(engine) if name.endswith("_bucket")}
    return sorted([*functions, *triggers, *indexes, *(["table"] if has_table else [])])


@by_dialect
def test_0012_fills_the_buckets_from_the_incidents_already_there_and_downgrades(empty_database):
    settings, engine = at_revision(empty_database, "0011")
    incidents = metadata.tables[f"{SCHEMA}.incidents"]
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.begin() as conn:  # written before 0012, over three days: MTTA n + 0.5 s, MTTR 100.25 s
            conn.execute(incidents.insert(), [
                {"id": uuid.UUID(int=n), "incident_id": f"inc-{n:016x}", "title": "t", "service": "api",
                 "severity": "low", "status": "resolved" if n % 2 else "acknowledged", "notes": [],
                 "created_at": NOW + timedelta(hours=14 * n), "updated_at": NOW,
                 "acknowledged_at": NOW + timedelta(hours=14 * n, seconds=n + 0.5),
                 "resolved_at": NOW + timedelta(hours=14 * n, seconds=100.25) if n % 2 else None}
                for n in range(7)
            ])
        migrate.upgrade(settings)
        made = _bucket_objects(engine) if postgres else []
        assert len(made) == (2 + 4 + 2 + 1 if postgres else 0)  # functions, triggers, indexes, table
        kept, recomputed = buckets_kept_and_recomputed(engine)
        assert kept == recomputed and (len(kept) >= 7 if postgres else kept == {})
        with engine.connect() as conn:
            body = incident_analytics(conn, AnalyticsFilters(since=NOW + timedelta(hours=14)))
        assert body["mtta_percentiles"]["p50"] == pytest.approx(4.0)  # of 1.5 … 6.5
        assert body["mttr_percentiles"] == dict.fromkeys(("p50", "p90", "p95", "p99"), 100.25)

        command.downgrade(migrate.alembic_config(settings), "0011")
        if postgres:
            assert _bucket_objects(engine) == []
        migrate.upgrade(settings)  # and up again
        assert buckets_kept_and_recomputed(engine) == (recomputed, recomputed)
        assert (_bucket_objects(engine) if postgres else []) == made
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- 0013: NOTIFY after commit


def _notified_or_told(engine: sa.Engine, incident_pk: uuid.UUID) -> tuple[list[int], list[str]]:
    """An event inserted in a session that notifies after commit: the pids of the notifications
    its commit sent to a listener, and the session's notices."""
    listener = Listener(engine.url.render_as_string(hide_password=False))
    raw = engine.raw_connection()
    try:
        raw.driver_connection.notices.clear()  # a pooled connection: an earlier call's are not this one's
        cursor = raw.cursor()
        cursor.execute("SELECT set_config('incident_feed.notify', 'after_commit', false), pg_backend_pid()")
        pid = cursor.fetchone()[1]
        cursor.execute(f"INSERT INTO {SCHEMA}.incident_events (incident_id, type, details, created_at)"
                       " VALUES (%s, 'note_added', '{}', now())", (str(incident_pk),))
        raw.commit()
        pids = listener.senders(within=1.0)  # a notification comes at once; none comes in a second
        assert set(pids) <= {pid}
        return pids, list(raw.driver_connection.notices)
    finally:
        raw.close()
        listener.close()


@postgresql_only
def test_0013_has_the_services_sessions_told_instead_of_notifying_and_downgrades(empty_database):
    settings, engine = at_revision(empty_database, "0012")
    incidents = metadata.tables[f"{SCHEMA}.incidents"]
    try:
        with engine.begin() as conn:
            conn.execute(incidents.insert(), {
                "id": uuid.UUID(int=1), "incident_id": "inc-1", "title": "t", "service": "api", "severity": "low",
                "status": "open", "notes": [], "created_at": NOW, "updated_at": NOW})
        pids, notices = _notified_or_told(engine, uuid.UUID(int=1))
        assert len(pids) == 1 and notices == []  # 0005's trigger: the commit notifies
        migrate.upgrade(settings)
        pids, notices = _notified_or_told(engine, uuid.UUID(int=1))
        assert pids == [] and notices == [f"NOTICE:  {NOTICE}\n"]
        command.downgrade(migrate.alembic_config(settings), "0012")
        pids, notices = _notified_or_told(engine, uuid.UUID(int=1))
        assert len(pids) == 1 and notices == []
    finally:
        engine.dispose()
