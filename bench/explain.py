"""EXPLAIN (ANALYZE, BUFFERS) of the very statements the service runs for lists and analytics.

The repository functions run against the seeded database while a listener records each
statement with its parameters; each one is then explained on its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from incident_app.db import create_engine
from incident_app.repository import analytics, incidents
from incident_app.settings import Settings


def _captured(engine: sa.Engine, call: Any) -> list[tuple[str, Any]]:
    statements: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if "information_schema" not in statement:
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.begin() as conn:
            call(conn)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return statements


def explain_report(url: str, rows: int, now: datetime) -> str:
    engine = create_engine(Settings(database_url=url))
    month = analytics.AnalyticsFilters(service="svc-05", since=now - timedelta(days=30), until=now)
    deep = min(10_000, rows // 2)
    cases = [
        ("list, no filter", lambda c: incidents.list_incidents(c, incidents.ListFilters(), limit=50, offset=0)),
        ("list, status=open", lambda c: incidents.list_incidents(c, incidents.ListFilters(status="open"),
                                                                 limit=50, offset=0)),
        ("list, severity=high", lambda c: incidents.list_incidents(c, incidents.ListFilters(severity="high"),
                                                                   limit=50, offset=0)),
        ("list, service=svc-10", lambda c: incidents.list_incidents(c, incidents.ListFilters(service="svc-10"),
                                                                    limit=50, offset=0)),
        (f"list, offset={deep}", lambda c: incidents.list_incidents(c, incidents.ListFilters(), limit=50,
                                                                     offset=deep)),
        ("analytics, no filter", lambda c: analytics.incident_analytics(c, analytics.AnalyticsFilters())),
        ("analytics, service=svc-05, last 30 days", lambda c: analytics.incident_analytics(c, month)),
    ]
    out = [f"# EXPLAIN ANALYZE at {rows:,} incidents", ""]
    for title, call in cases:
        out += [f"## {title}", ""]
        for statement, parameters in _captured(engine, call):
            with engine.connect() as conn:
                plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).scalars().all()
            out += ["```sql", statement.strip(), "```", "", "```", *plan, "```", ""]
    engine.dispose()
    return "\n".join(out)
