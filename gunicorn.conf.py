"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app`.

The master validates the configuration and migrates the database once; each gevent worker then
makes psycopg2 cooperative before the application (and its connection pool) is created.
"""

# Patch before anything imports ssl or socket: the gevent worker would patch too late otherwise.
import gevent
from gevent import monkey

monkey.patch_all()


import gc
import glob
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

# prometheus_client chooses multiprocess mode when it is first imported (incident_app imports it),
# and workers inherit the environment at fork: the directory must be in place before that import.
# Unset: a fresh directory for this start, removed at exit. Set: kept, and emptied in on_starting.
_fresh_multiproc_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _fresh_multiproc_dir = tempfile.mkdtemp(prefix="incident-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _fresh_multiproc_dir
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from gunicorn import glogging
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from incident_app import migrate
from incident_app.logs import JsonFormatter
from incident_app.settings import Settings, SettingsError

try:
    settings = Settings.from_env()
except SettingsError as exc:
    sys.exit(f"configuration error: {exc}")

bind = f"0.0.0.0:{settings.service_port}"
worker_class = "gevent"
# One gevent worker per core serves many requests at once; WEB_CONCURRENCY overrides the count.
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
# Connections per worker at once. Live-feed followers (SSE, WebSocket) each hold one for as long
# as they follow, but no database connection: room for the API's clients besides (README, Live changes).
worker_connections = 2000
timeout = 30
graceful_timeout = 20
keepalive = 5
# The service logs each request itself (JSON, with the request id); no second access log.
accesslog = None


class ServiceLogger(glogging.Logger):
    """gunicorn's logger without its access log. `accesslog = None` alone does not turn it off
    while logconfig_dict is set: gunicorn then builds every access line (its atoms: 4% of a
    worker's time under load, in py-spy) for a logger that drops it."""

    @property
    def access_log_enabled(self) -> bool:
        return False


logger_class = ServiceLogger
errorlog = "-"
loglevel = settings.log_level.lower()
# gunicorn 27 otherwise opens a control socket in the home directory, which may be read-only.
control_socket_disable = True
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JsonFormatter}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["stderr"], "level": settings.log_level},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": settings.log_level, "propagate": False},
        "gunicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
    },
}

MIGRATION_WAIT_SECONDS = 60


def on_starting(server):
    """Migrate once, in the master, before any worker serves. Waits for a database still starting."""
    log = logging.getLogger("gunicorn.error")
    # Files left by a previous run would add its counts to this one's (a reload does not come here).
    for stale in glob.glob(os.path.join(settings.prometheus_multiproc_dir, "*.db")):
        os.remove(stale)
    deadline = time.monotonic() + MIGRATION_WAIT_SECONDS
    delay = 0.5
    while True:
        try:
            migrate.upgrade(settings)
            log.info("database schema at %s", migrate.head_revision())
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                log.error("database migration failed: %s", exc)
                raise
            log.warning("database not ready for migration (%s); retrying", exc.__class__.__name__)
            time.sleep(delay)
            delay = min(delay * 2, 5)


def post_fork(server, worker):
    # Before the app exists: every psycopg2 connection it opens will yield to gevent while waiting.
    from incident_app.db import make_psycopg_cooperative

    make_psycopg_cooperative()


def post_worker_init(worker):
    # Each worker runs the background work in a greenlet (outbox retries, escalation, key expiry);
    # safe with any number of workers and replicas because every claim goes through the database.
    extensions = getattr(worker.wsgi, "extensions", {})
    background = extensions.get("background")
    if background is None:
        worker.log.warning("the WSGI app is not the incident service: no background work started")
    elif extensions["settings"].background_work:
        background.start()
    # What the worker built to serve (modules, the app, its engine and schemas) lives as long as the
    # worker: out of the collector's sight, a full collection no longer walks all of it while every
    # request waits. Measured under list load: full collections took 73 ms before, 1.4–2.9 ms after,
    # and list p99 fell from 76–80 to 63–67 ms in alternating runs.
    feed = extensions.get("feed")
    if feed is not None:
        feed.start()  # its listening connection is up before the first follower comes
        gevent.spawn(_end_streams_on_shutdown, worker, feed)
    gc.freeze()
    worker.log.info("worker ready; %d objects frozen out of garbage collection", gc.get_freeze_count())


def _end_streams_on_shutdown(worker, feed):
    # A follower's stream never ends by itself: on SIGTERM gunicorn would wait graceful_timeout for
    # it. Ending every stream as soon as the worker stops serving lets it exit at once; the clients
    # reconnect (EventSource does by itself) to a worker still running and resume from their cursor.
    while worker.alive:
        gevent.sleep(0.25)
    feed.stop()


def post_request(worker, req, environ, resp):
    # Yield once after every response. A request that does no I/O but its socket (a reused
    # analytics answer, /health/live) otherwise lets the hub serve some keep-alive connections
    # again and again while others starve: with both workers saturated, /health/live measured
    # p50 1.7 ms but p75 121 ms and p99 0.9 s, and cached analytics drew client timeouts (10 s).
    # With the yield: p75 18 ms, p99 0.4 s, throughput within 10%.
    gevent.sleep(0)


def worker_exit(server, worker):
    background = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("background")
    if background is not None:
        background.stop(timeout=2)


def child_exit(server, worker):
    # A dead worker's counters and histograms keep counting in the sums; its live gauges must go.
    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server):
    if _fresh_multiproc_dir is not None:
        shutil.rmtree(_fresh_multiproc_dir, ignore_errors=True)
