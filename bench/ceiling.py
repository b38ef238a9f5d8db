"""The ceiling: the least an endpoint of this stack can do, to measure the service against.

Same Flask, same SQLAlchemy Core engine (pool, timeouts, pre-ping from incident_app.db), same
gunicorn configuration and gevent workers; each request does only the bare database work, one
statement that commits by itself (one round trip, no BEGIN or COMMIT), and answers the row as JSON:

- POST /ceiling/incidents: one `INSERT … RETURNING` of an open incident;
- GET /ceiling/incidents/<incident_id>: one `SELECT` by the unique key the API is addressed by.

Served by `gunicorn -c gunicorn.conf.py --pythonpath bench ceiling:application`: the bare WSGI
callable, so that the service's worker hooks (background work) see no service app and stay out.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask

from incident_app.db import create_engine, warm_pool
from incident_app.settings import Settings
from incident_app.tables import incidents
from incident_app.transactions import reading, single_statement

settings = Settings.from_env()
engine = create_engine(settings)
warm_pool(engine, settings.db_pool_min)
app = Flask(__name__)
application = app.wsgi_app


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
    with single_statement(engine) as conn:
        row = conn.execute(incidents.insert().values(**values).returning(*incidents.c)).one()
    return _document(row), 201


@app.get("/ceiling/incidents/<incident_id>")
def select_incident(incident_id: str):
    with reading(engine) as conn:
        row = conn.execute(sa.select(*incidents.c).where(incidents.c.incident_id == incident_id)).one_or_none()
    if row is None:
        return {"code": 404, "status": "Not Found", "message": "no such incident"}, 404
    return _document(row)
