"""Helpers of the reliability tests: databases of their own, direct reads of the outbox and timeline,
and polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from incident_app.tables import SCHEMA

T = TypeVar("T")


def engine_for(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if url.startswith("sqlite"):
        engine = engine.execution_options(schema_translate_map={SCHEMA: None})
    return engine


def rows(url: str, sql: str, **params: Any) -> list[sa.Row]:
    """Rows of one query on the `incidents` tables (schema-qualified on PostgreSQL only)."""
    prefix = "" if url.startswith("sqlite") else f"{SCHEMA}."
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql.replace("incidents.", prefix)), params))
    finally:
        engine.dispose()


def wait_until(probe: Callable[[], T], *, timeout: float, every: float = 0.05) -> T:
    """The probe's first truthy answer, or its last answer when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
