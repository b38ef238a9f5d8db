"""Server-side prepared statements (prepared.execute_prepared): what get one and lists run on PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from incident_app.prepared import _prepared, execute_prepared
from incident_app.tables import incidents
from incident_app.transactions import reading, transaction

NEW = {"title": "Checkout errors", "service": "payments", "severity": "high"}

# The incidents of a service, newest first, with a literal SQLAlchemy binds by itself (the 'x') and
# typed columns (a UUID, a timestamp).
BY_SERVICE = (
    sa.select(incidents.c.id, incidents.c.incident_id, incidents.c.created_at, sa.literal("x").label("marker"))
    .where(incidents.c.service == sa.bindparam("service"))
    .order_by(incidents.c.created_at.desc(), incidents.c.incident_id.desc())
)

postgresql_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def engine(make_app):
    """The engine of an app with one pooled connection: every use below is on the same session."""
    app = make_app(db_pool_max=1)
    client = app.test_client()
    for _ in range(3):
        assert client.post("/api/v1/incidents", json=NEW).status_code == 201
    return app.extensions["engine"]


def prepared_here(engine) -> list[str]:
    with reading(engine) as conn:
        return conn.exec_driver_sql("SELECT name FROM pg_prepared_statements").scalars().all()


def test_answers_as_the_statement_itself_does(engine):
    with reading(engine) as conn:
        expected = conn.execute(BY_SERVICE, {"service": "payments"}).all()
    for _ in range(2):
        with reading(engine) as conn:
            rows = execute_prepared(conn, BY_SERVICE, {"service": "payments"}).all()
        assert rows == expected
        assert [row._mapping["marker"] for row in rows] == ["x"] * 3
        assert isinstance(rows[0].id, uuid.UUID)
        assert rows[0].created_at.utcoffset() is not None
    with reading(engine) as conn:
        assert execute_prepared(conn, BY_SERVICE, {"service": "nobody"}).all() == []


@postgresql_only
def test_prepared_once_per_connection_then_only_executed(engine):
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        sent.append(statement.split(None, 1)[0].upper())

    before = prepared_here(engine)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        for _ in range(3):
            with reading(engine) as conn:
                execute_prepared(conn, BY_SERVICE, {"service": "payments"}).all()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert sent == ["PREPARE", "EXECUTE", "EXECUTE", "EXECUTE"]
    assert len(set(prepared_here(engine)) - set(before)) == 1


@postgresql_only
def test_a_session_that_lost_its_statements_prepares_them_again(engine):
    with reading(engine) as conn:
        execute_prepared(conn, BY_SERVICE, {"service": "payments"}).all()
        conn.exec_driver_sql("DEALLOCATE ALL")  # as a pooler's DISCARD ALL would
        assert len(execute_prepared(conn, BY_SERVICE, {"service": "payments"}).all()) == 3
    assert prepared_here(engine)


@postgresql_only
def test_a_statement_whose_result_type_changed_is_prepared_again(engine):
    probe = sa.Table(f"prepared_probe_{uuid.uuid4().hex[:8]}", sa.MetaData(), sa.Column("value", sa.Integer()))
    statement = sa.select(probe.c.value).where(probe.c.value > sa.bindparam("above")).order_by(probe.c.value)
    with reading(engine) as conn:
        probe.create(conn)
        try:
            conn.execute(probe.insert(), [{"value": 1}, {"value": 2}])
            assert execute_prepared(conn, statement, {"above": 0}).scalars().all() == [1, 2]
            conn.exec_driver_sql(f"ALTER TABLE {probe.name} ALTER COLUMN value TYPE bigint")
            # PostgreSQL would answer "cached plan must not change result type".
            assert execute_prepared(conn, statement, {"above": 1}).scalars().all() == [2]
        finally:
            probe.drop(conn)


@postgresql_only
def test_in_a_transaction_the_loss_fails_that_transaction_and_the_next_use_prepares_again(engine):
    with pytest.raises(sa.exc.DBAPIError, match="does not exist"), transaction(engine) as conn:
        execute_prepared(conn, BY_SERVICE, {"service": "payments"}).all()
        conn.exec_driver_sql("DEALLOCATE ALL")
        execute_prepared(conn, BY_SERVICE, {"service": "payments"}).all()
    for _ in range(2):
        with transaction(engine) as conn:
            assert len(execute_prepared(conn, BY_SERVICE, {"service": "payments"}).all()) == 3


@postgresql_only
def test_the_session_plans_a_prepared_statement_once_for_any_values(engine):
    with reading(engine) as conn:
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_generic_plan"
        execute_prepared(conn, BY_SERVICE, {"service": "payments"}).all()
        execute_prepared(conn, BY_SERVICE, {"service": "billing"}).all()
        # This statement's alone: the pooled connection may hold others, prepared by earlier tests' writes.
        plans = conn.exec_driver_sql(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = %(name)s",
            {"name": _prepared(BY_SERVICE).name},
        ).one()
    assert plans == (2, 0)
