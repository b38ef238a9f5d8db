"""The ceiling: the least an endpoint of this stack can do, to measure the service against.

The bare stack doing the bare work on a table of its own: Flask, a plain SQLAlchemy Core engine
(a fixed pool as large as the service's, autocommit so that one statement is one round trip), the
same gunicorn configuration and gevent workers with psycopg2 made cooperative. Nothing of the
service: its table `bench_ceiling.incidents` has an incident's columns, its primary key and the
unique key the API is addressed by, and no trigger, counter, extra index or session setting.

- POST /ceiling/incidents: one `INSERT … RETURNING` of an open incident;
- GET /ceiling/incidents/<incident_id>: one `SELECT` by that unique key.

`create_table(url)` makes the table once, before the ceiling starts (bench/run.py copies the seeded
incidents into it, so its SELECT reads a table of the same size). Served by
`gunicorn -c gunicorn.conf.py --pythonpath bench ceiling:application`: the bare WSGI callable, so
that the service's worker hooks (background work) see no service app and stay out.
"""

from __future__ import annotations

import os
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(schema="bench_ceiling")
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
    sa.Column("incident_id", sa.String(255), nullable=False, unique=True),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("service", sa.String(255), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("assigned_to", sa.String(255)),
    sa.Column("notes", postgresql.JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def create_table(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema("bench_ceiling", if_not_exists=True))
        metadata.create_all(conn)
    engine.dispose()


def _engine() -> sa.Engine:
    # Sized like the service's pool (bench/run.py sets DB_POOL_MAX for both) and filled as it runs.
    size = int(os.environ.get("DB_POOL_MAX") or 10)
    return sa.create_engine(os.environ["DATABASE_URL"], pool_size=size, max_overflow=0, isolation_level="AUTOCOMMIT")


app = Flask(__name__)
application = app.wsgi_app
_engines: list[sa.Engine] = []


def engine() -> sa.Engine:
    # Made in the worker on first use, after gunicorn's post_fork made psycopg2 cooperative.
    if not _engines:
        _engines.append(_engine())
    return _engines[0]


def _document(row: sa.Row) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row._mapping.items()}


@app.post("/ceiling/incidents")
def insert_incident():
    now = datetime.now(UTC)
    values = {
        "id": uuid.uuid4(),
        "incident_id": f"inc-{secrets.token_hex(8)}",
        "title": "Ceiling insert",
        "service": "ceiling",
        "severity": "low",
        "status": "open",
        "notes": [],
        "created_at": now,
        "updated_at": now,
    }
    with engine().connect() as conn:
        row = conn.execute(incidents.insert().values(**values).returning(*incidents.c)).one()
    return _document(row), 201


@app.get("/ceiling/incidents/<incident_id>")
def select_incident(incident_id: str):
    with engine().connect() as conn:
        row = conn.execute(sa.select(*incidents.c).where(incidents.c.incident_id == incident_id)).one_or_none()
    if row is None:
        return {"code": 404, "status": "Not Found", "message": "no such incident"}, 404
    return _document(row)
