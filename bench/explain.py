"""EXPLAIN (ANALYZE, BUFFERS) of the very statements the service runs for lists and analytics.

The repository functions run against the seeded database while a listener records each
statement with its parameters; each one is then explained on its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from incident_app.db import create_engine
from incident_app.repository import analytics
from incident_app.repository.pages import ListFilters
from incident_app.settings import Settings
from incident_app.store.postgres import PostgresStore


def _explained(conn: sa.Connection, call: Any) -> list[str]:
    """Run `call` on `conn`, recording what it sends, then EXPLAIN ANALYZE each statement on the same
    connection. A prepared statement (prepared.execute_prepared) is explained as the service runs it,
    `EXPLAIN EXECUTE` with its plan for any values, under the SQL of its PREPARE."""
    statements: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany) -> None:
        if "information_schema" not in statement and not statement.startswith("PREPARE "):
            statements.append((statement, parameters))

    sa.event.listen(conn, "before_cursor_execute", record)
    try:
        call(conn)
    finally:
        sa.event.remove(conn, "before_cursor_execute", record)
    out = []
    for statement, parameters in statements:
        shown = statement.strip()
        if statement.startswith("EXECUTE "):
            name = statement.split()[1].split("(")[0]
            prepared = conn.exec_driver_sql(
                "SELECT statement FROM pg_prepared_statements WHERE name = %(name)s", {"name": name}).scalar_one()
            shown = f"{prepared.strip()};\n{statement.strip()}  -- {parameters}"
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).scalars().all()
        out += ["```sql", shown, "```", "", "```", *plan, "```", ""]
    return out


def explain_report(url: str, rows: int, now: datetime) -> str:
    engine = create_engine(Settings(database_url=url))
    month = analytics.AnalyticsFilters(service="svc-05", since=now - timedelta(days=30), until=now)
    deep = min(10_000, rows // 2)
    def page(offset: int = 0, **filters: str):
        # The statement the service runs for a list on PostgreSQL, planned as the service plans it.
        return ["enable_seqscan = on"], lambda c: PostgresStore.page_json(c, ListFilters(**filters), limit=50,
                                                                          offset=offset)

    def analysed(filters: analytics.AnalyticsFilters):
        # Under the store's settings for analytics (PostgresStore.analytics).
        return PostgresStore.analytics_settings(filters), lambda c: analytics.incident_analytics(c, filters)

    cases = [
        ("list, no filter", page()),
        ("list, status=open", page(status="open")),
        ("list, severity=high", page(severity="high")),
        ("list, service=svc-10", page(service="svc-10")),
        (f"list, offset={deep}", page(deep)),
        ("analytics, no filter", analysed(analytics.AnalyticsFilters())),
        ("analytics, last 30 days", analysed(analytics.AnalyticsFilters(since=now - timedelta(days=30)))),
        ("analytics, service=svc-05, last 30 days", analysed(month)),
    ]
    out = [f"# EXPLAIN ANALYZE at {rows:,} incidents", ""]
    with engine.connect() as conn:
        for title, (settings, call) in cases:
            conn.exec_driver_sql("RESET ALL")
            for setting in settings:
                conn.exec_driver_sql(f"SET {setting}")
            out += [f"## {title}", "", *_explained(conn, call)]
    engine.dispose()
    return "\n".join(out)
