"""Starting whatever the database is doing: a worker serves from its first second (liveness at
once, the API and readiness 503 while the schema is not known to be current), and brings the
schema to head in the background as soon as the database answers, however long that takes.

Every worker of every replica tries; the upgrade holds an advisory lock (migrations/env.py), so
it runs once and the others find the schema at head.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import Flask, jsonify, request
from sqlalchemy.engine import Engine

from incident_app import migrate
from incident_app.db import warm_pool
from incident_app.errors import error_body
from incident_app.settings import Settings

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 5.0
RECHECK_SECONDS = 1.0


class SchemaState:
    """Whether the database schema is at head, as far as this process knows. Once current it stays
    so (a later outage is the request path's 503); until then it asks `is_current` at most once a
    second, so that an app built on a database migrated by someone else serves at once."""

    def __init__(self, is_current: Callable[[], bool], *, recheck_every: float = RECHECK_SECONDS) -> None:
        self._is_current = is_current
        self._recheck_every = recheck_every
        self._current = False
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def is_current(self) -> bool:
        if self._current:
            return True
        # One request asks at a time; the others answer with what is known rather than wait for it.
        if not self._lock.acquire(blocking=False):
            return self._current
        try:
            now = time.monotonic()
            if not self._current and now - self._checked_at >= self._recheck_every:
                self._checked_at = now
                try:
                    self._current = self._is_current()
                except Exception:  # the database does not answer: not current as far as we know
                    self._current = False
        finally:
            self._lock.release()
        return self._current

    def mark_current(self) -> None:
        self._current = True


def install_schema_gate(app: Flask, schema: SchemaState) -> None:
    """API calls answer 503 JSON at once while the schema is not known to be current, rather than
    failing on tables that are not there yet. The probes and /metrics are not gated."""

    @app.before_request
    def _schema_is_current():
        if request.path.startswith("/api/") and request.method != "OPTIONS" and not schema.is_current():
            message = "the database is not ready yet (starting or migrating), try again shortly"
            response = jsonify(error_body(503, message))
            response.status_code = 503
            response.headers["Retry-After"] = "5"
            return response
        return None


class Startup:
    """Migrate in the background until it succeeds, then warm the pool and start what waits for
    the schema (the background work)."""

    def __init__(self, *, settings: Settings, engine: Engine, schema: SchemaState) -> None:
        self.settings = settings
        self.engine = engine
        self.schema = schema
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, then: Callable[[], object] | None = None) -> Startup:
        """In a greenlet of the worker (a thread elsewhere): returns at once."""
        self._thread = threading.Thread(target=self.run, args=(then,), name="startup", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def run(self, then: Callable[[], object] | None = None) -> bool:
        """Migrate, retrying with backoff until it succeeds or stop(); True once the schema is current."""
        delay = FIRST_RETRY_SECONDS
        while not self._stop.is_set():
            try:
                migrate.upgrade(self.settings)
            except Exception as exc:  # the database is down, hung or still starting: try again
                log.warning("database not ready for migration (%s: %s); retrying in %.1f s",
                            exc.__class__.__name__, _first_line(exc), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            self.schema.mark_current()
            log.info("database schema at %s", migrate.head_revision())
            warm_pool(self.engine, self.settings.db_pool_min)
            if then is not None:
                then()
            return True
        return False


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
