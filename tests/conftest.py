"""Fixtures: both database backends (migrated once, emptied before each test), fake peers as real
HTTP servers, the app and its client, the app's clock and an incident factory, and the service under
real gunicorn.

PostgreSQL comes from TEST_DATABASE_URL (default: postgres on 127.0.0.1:5432). Each run creates
its own databases and drops them. Unreachable PostgreSQL fails the run under CI and skips the
PostgreSQL cases elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from incident_app import create_app, migrate
from incident_app.settings import Settings, normalize_database_url
from incident_app.tables import incident_counts, incident_days, incident_duration_buckets, made_on, metadata
from tests.support.gunicorn import GunicornService
from tests.support.incidents import URL, VALID
from tests.support.peers import FakePeer

PG_ADMIN_URL = normalize_database_url(
    os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
BACKENDS = ("sqlite", "postgresql")


# --------------------------------------------------------------------------- databases


def _admin_engine() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


def create_pg_database(prefix: str = "incident_test") -> str:
    """A new empty PostgreSQL database; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_available() -> None:
    try:
        engine = _admin_engine()
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except sa.exc.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {make_url(PG_ADMIN_URL).render_as_string()}: {exc.orig}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI requires PostgreSQL)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_database(postgres_available) -> Iterator[Callable[[], str]]:
    """Factory of empty PostgreSQL databases, all dropped at the end of the run."""
    created: list[str] = []

    def make() -> str:
        created.append(create_pg_database())
        return created[-1]

    yield make
    for url in created:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def sqlite_database(tmp_path_factory) -> Callable[[], str]:
    def make() -> str:
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'incidents.db'}"

    return make


@pytest.fixture(scope="session")
def migrated_urls(pg_database, sqlite_database) -> dict[str, Callable[[], str]]:
    """Per backend, the URL of one database migrated to head (made on first use)."""
    made: dict[str, str] = {}
    factories = {"postgresql": pg_database, "sqlite": sqlite_database}

    def getter(backend: str) -> Callable[[], str]:
        def get() -> str:
            if backend not in made:
                made[backend] = factories[backend]()
                migrate.upgrade(Settings(database_url=made[backend]))
            return made[backend]

        return get

    return {backend: getter(backend) for backend in BACKENDS}


_cleaners: dict[str, sa.Engine] = {}


def empty_tables(url: str) -> None:
    engine = _cleaners.get(url)
    if engine is None:
        engine = _cleaners[url] = sa.create_engine(url).execution_options(
            schema_translate_map={"incidents": None} if url.startswith("sqlite") else {}
        )
    # Deleting incidents fires the triggers that keep the derived tables: empty those after.
    dialect = engine.dialect.name
    kept_by_triggers = [t for t in (incident_counts, incident_days, incident_duration_buckets) if made_on(t, dialect)]
    tables = [t for t in reversed(metadata.sorted_tables) if t not in kept_by_triggers and made_on(t, dialect)]
    with engine.begin() as conn:
        for table in [*tables, *kept_by_triggers]:
            conn.execute(table.delete())


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "postgresql":
        request.getfixturevalue("postgres_available")
    return request.param


@pytest.fixture
def database_url(backend, migrated_urls) -> str:
    url = migrated_urls[backend]()
    empty_tables(url)
    return url


@pytest.fixture
def postgres_url(migrated_urls, postgres_available) -> str:
    """For the tests that are about PostgreSQL only (concurrency through gunicorn, outages)."""
    url = migrated_urls["postgresql"]()
    empty_tables(url)
    return url


# --------------------------------------------------------------------------- peers


@pytest.fixture(scope="session")
def _oncall_server() -> Iterator[FakePeer]:
    peer = FakePeer()
    yield peer
    peer.close()


@pytest.fixture(scope="session")
def _notification_server() -> Iterator[FakePeer]:
    peer = FakePeer()
    yield peer
    peer.close()


@pytest.fixture
def oncall(_oncall_server) -> FakePeer:
    """The On-Call Service; by default it names alice as primary and bob as secondary."""
    _oncall_server.reset()
    _oncall_server.respond(200, {
        "team": "any",
        "primary": {"name": "Alice", "email": "alice@example.com"},
        "secondary": {"name": "Bob", "email": "bob@example.com"},
    })
    return _oncall_server


@pytest.fixture
def notifier(_notification_server) -> FakePeer:
    """The Notification Service; by default it accepts every notification."""
    _notification_server.reset()
    _notification_server.respond(200, {"status": "sent"})
    return _notification_server


# --------------------------------------------------------------------------- the app


@pytest.fixture
def settings(database_url, oncall, notifier) -> Settings:
    return Settings(
        database_url=database_url,
        oncall_service_url=oncall.url,
        notification_service_url=notifier.url,
        http_client_timeout=2.0,
        db_pool_max=5,
        log_level="WARNING",
    )


@pytest.fixture
def make_app(settings) -> Iterator[Callable[..., object]]:
    """Build an app with some settings changed: make_app(http_client_timeout=0.5)."""
    apps = []

    def make(**changes):
        app = create_app(replace(settings, **changes))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["feed"].close()
        app.extensions["engine"].dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


# --------------------------------------------------------------------------- shared setup

class Clock:
    """A clock a test sets: the real time until `set`, then that moment until set again or advanced."""

    def __init__(self) -> None:
        self.moment: datetime | None = None

    def __call__(self) -> datetime:
        return self.moment or datetime.now(UTC)

    def set(self, moment: datetime) -> None:
        self.moment = moment

    def advance(self, seconds: float) -> None:
        self.moment = self() + timedelta(seconds=seconds)


@pytest.fixture
def clock(app) -> Clock:
    """The app's clock, read by the use cases and by the create's flow (who stamps what)."""
    fake = Clock()
    service = app.extensions["incident_service"]
    service.clock = service.opening.clock = fake
    return fake


@pytest.fixture
def create_incident(request) -> Callable[..., dict]:
    """Create an incident through the API and return its document: create_incident(severity="low"),
    create_incident(status="resolved") (created, then PATCHed there), create_incident(alert_ids=[...]).
    Through the test's `client` unless given another: create_incident(via=make_app(...).test_client())."""

    def create(*, status: str = "open", via=None, **fields) -> dict:
        client = via or request.getfixturevalue("client")
        response = client.post(URL, json={**VALID, **fields})
        assert response.status_code == 201, response.get_json()
        document = response.get_json()
        if status != "open":
            response = client.patch(f"{URL}/{document['incident_id']}", json={"status": status})
            assert response.status_code == 200, response.get_json()
            document = response.get_json()
        return document

    return create


# --------------------------------------------------------------------------- gunicorn


@pytest.fixture(scope="session")
def _session_peers() -> Iterator[tuple[FakePeer, FakePeer]]:
    oncall, notifier = FakePeer(), FakePeer()
    yield oncall, notifier
    oncall.close()
    notifier.close()


@pytest.fixture(scope="session")
def live_service(pg_database, _session_peers, tmp_path_factory) -> Iterator[GunicornService]:
    """The service under gunicorn with 2 gevent workers on PostgreSQL, shared by a session, on a
    database of its own: its background work (the outbox, webhook deliveries, escalation) would
    otherwise claim the rows of the tests that drive that work by hand on the shared database."""
    url = pg_database()
    migrate.upgrade(Settings(database_url=url))
    oncall, notifier = _session_peers
    oncall.respond(200, {"primary": {"name": "Alice", "email": "alice@example.com"}})
    notifier.respond(200, {"status": "sent"})
    logs: Path = tmp_path_factory.mktemp("gunicorn") / "service.log"
    service = GunicornService(
        {
            "DATABASE_URL": url,
            "ONCALL_SERVICE_URL": oncall.url,
            "NOTIFICATION_SERVICE_URL": notifier.url,
            "HTTP_CLIENT_TIMEOUT": "2",
        },
        workers=2,
        log_path=logs,
    ).start()
    yield service
    service.stop()
