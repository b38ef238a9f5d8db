"""The benchmark's database: created fresh, migrated with the service's own migrations, seeded in
SQL (generate_series, no API calls), and dropped at the end.

The mix: ~50 services (a few busy, many quiet), every severity, about 10% unresolved (recent),
acknowledge and resolve times log-spread from minutes to hours, notes on ~20%, linked alerts on ~30%.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from incident_app import migrate
from incident_app.repository import counts
from incident_app.settings import Settings, normalize_database_url

SERVICES = 50

_SEED_INCIDENTS = """
INSERT INTO incidents.incidents (id, incident_id, title, description, service, severity, status,
                                 assigned_to, notes, created_at, acknowledged_at, resolved_at, updated_at)
SELECT gen_random_uuid(),
       -- random-looking hex, unique because the last 8 digits are the row number
       'inc-' || substr(md5(i::text || %(salt)s), 1, 8) || lpad(to_hex(i), 8, '0'),
       (ARRAY['Error rate above 5%%', 'Latency p99 above 2 s', 'Disk usage above 90%%',
              'Pods crash-looping', 'Certificate expires in 7 days', 'Queue backlog growing'])[1 + i %% 6]
         || ' on ' || svc,
       CASE WHEN r_desc < 0.5 THEN 'Raised by the alert rules of ' || svc || '; see the runbook.' END,
       svc,
       sev::incidents.severity_level,
       st::incidents.incident_status,
       CASE WHEN r_assign < 0.9 THEN svc || '-primary@example.com' END,
       CASE WHEN r_note < 0.2 THEN jsonb_build_array(jsonb_build_object(
              'id', gen_random_uuid(), 'content', 'rolled back the last deploy', 'author', 'bob',
              'created_at', to_char(created + interval '3 minutes', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')))
            ELSE '[]'::jsonb END,
       created, ack, res, greatest(created, ack, res)
FROM (
    SELECT *,
           CASE WHEN st = 'acknowledged' OR (st = 'resolved' AND r_ack < 0.9)
                THEN least(created + mtta, now()) END AS ack,
           CASE WHEN st = 'resolved' THEN created + mtta + mttr END AS res
    FROM (
        SELECT i, r_desc, r_assign, r_note, r_ack,
               'svc-' || lpad(floor(%(services)s * power(r_svc, 1.5))::int::text, 2, '0') AS svc,
               CASE WHEN r_sev < 0.10 THEN 'critical' WHEN r_sev < 0.35 THEN 'high'
                    WHEN r_sev < 0.75 THEN 'medium' ELSE 'low' END AS sev,
               CASE WHEN r_st < 0.04 THEN 'open' WHEN r_st < 0.10 THEN 'acknowledged' ELSE 'resolved' END AS st,
               -- unresolved incidents are recent; resolved ones spread over half a year
               CASE WHEN r_st < 0.10 THEN now() - r_age * interval '2 days'
                    ELSE now() - interval '1 day' - r_age * interval '180 days' END AS created,
               make_interval(secs => 60 * exp(r_mtta * ln(240))) AS mtta,     -- 1 min .. 4 h
               make_interval(secs => 300 * exp(r_mttr * ln(100))) AS mttr     -- 5 min .. 8 h more
        FROM (
            SELECT i, random() AS r_svc, random() AS r_sev, random() AS r_st, random() AS r_age,
                   random() AS r_mtta, random() AS r_mttr, random() AS r_ack, random() AS r_desc,
                   random() AS r_assign, random() AS r_note
            FROM generate_series(%(first)s, %(last)s) AS i
            OFFSET 0  -- evaluate each random() once per row
        ) AS draws
    ) AS shaped
) AS timed
"""

_SEED_ALERTS = """
INSERT INTO incidents.incident_alerts (incident_id, alert_id, linked_at)
SELECT id, gen_random_uuid(), created_at FROM incidents.incidents WHERE random() < 0.3
UNION ALL
SELECT id, gen_random_uuid(), created_at + interval '1 minute' FROM incidents.incidents WHERE random() < 0.1
"""

_OPEN_INCIDENTS = """
INSERT INTO incidents.incidents (id, incident_id, title, service, severity, status, notes, created_at, updated_at)
SELECT gen_random_uuid(), 'inc-' || substr(md5(random()::text), 1, 16), 'Provisioned for acknowledge',
       'svc-' || lpad((i %% %(services)s)::text, 2, '0'),
       (ARRAY['critical', 'high', 'medium', 'low'])[1 + i %% 4]::incidents.severity_level,
       'open', '[]'::jsonb, now() - interval '1 minute', now() - interval '1 minute'
FROM generate_series(1, %(count)s) AS i
ON CONFLICT (incident_id) DO NOTHING
RETURNING incident_id
"""


def _admin(admin_url: str) -> sa.Engine:
    return sa.create_engine(normalize_database_url(admin_url), isolation_level="AUTOCOMMIT")


def create_database(admin_url: str) -> str:
    """A new empty database next to `admin_url`'s; returns its URL."""
    name = f"incident_bench_{uuid.uuid4().hex[:10]}"
    engine = _admin(admin_url)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return make_url(normalize_database_url(admin_url)).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    engine = _admin(admin_url)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    engine.dispose()


def migrate_and_seed(url: str, rows: int, *, batch: int = 250_000) -> None:
    migrate.upgrade(Settings(database_url=url))
    engine = sa.create_engine(url, connect_args={"options": "-c timezone=UTC"})
    salt = uuid.uuid4().hex[:8]
    for first in range(1, rows + 1, batch):
        with engine.begin() as conn:
            params = {"first": first, "last": min(first + batch - 1, rows), "salt": salt, "services": SERVICES}
            conn.exec_driver_sql(_SEED_INCIDENTS, params)
    with engine.begin() as conn:
        conn.exec_driver_sql(_SEED_ALERTS)
    # The triggers' tables as the service's background work leaves them within a minute: each
    # key's shards folded into one row (the bulk insert spread them over 8).
    counts.fold_shards(engine)
    # Fresh statistics and visibility map: the planner and index-only scans see settled tables.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("incidents", "incident_alerts", "incident_counts", "incident_days", "incident_duration_buckets"):
            conn.exec_driver_sql(f"VACUUM ANALYZE incidents.{table}")
    engine.dispose()


_COPY_INTO_CEILING = """
INSERT INTO bench_ceiling.incidents (id, incident_id, title, description, service, severity, status,
                                     assigned_to, notes, created_at, acknowledged_at, resolved_at, updated_at)
SELECT id, incident_id, title, description, service, severity::text, status::text,
       assigned_to, notes, created_at, acknowledged_at, resolved_at, updated_at
FROM incidents.incidents
"""


def seed_ceiling(url: str) -> None:
    """The ceiling's own table (bench/ceiling.py), holding a copy of the seeded incidents: its SELECT
    reads a table as large as the service's, with nothing of the service on it."""
    from bench import ceiling

    ceiling.create_table(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(_COPY_INTO_CEILING)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE bench_ceiling.incidents")
    engine.dispose()


def sample_incident_ids(url: str, count: int) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ids = list(
            conn.exec_driver_sql(
                "SELECT incident_id FROM incidents.incidents ORDER BY random() LIMIT %(n)s", {"n": count}
            ).scalars()
        )
    engine.dispose()
    return ids


def run_sql(url: str, sql: str) -> None:
    """Run an SQL script on the benchmark's database, in one transaction."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def provision_open_incidents(url: str, count: int) -> list[str]:
    """Fresh open incidents, so that every acknowledge of a run changes a different incident."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        ids = list(conn.exec_driver_sql(_OPEN_INCIDENTS, {"count": count, "services": SERVICES}).scalars())
    engine.dispose()
    return ids


def count_open(url: str, incident_ids: list[str]) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT count(*) FROM incidents.incidents WHERE status = 'open' AND incident_id = ANY(%(ids)s)",
            {"ids": incident_ids},
        ).scalar_one()
    engine.dispose()
    return found


def storm_outcome(url: str) -> tuple[int, int]:
    """The storm scenario's incidents (its dedup keys are `storm-NN`) and the pages they made (outbox rows)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        incidents, pages = conn.exec_driver_sql(
            "SELECT count(DISTINCT i.id), count(o.id) FROM incidents.incidents i"
            " LEFT JOIN incidents.notification_outbox o ON o.incident_id = i.id WHERE i.dedup_key LIKE 'storm-%%'"
        ).one()
    engine.dispose()
    return incidents, pages
