"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app`.

The master validates the configuration and never waits for the database; each gevent worker makes
psycopg2 cooperative before the application (and its connection pool) is created, serves at once,
and migrates the database in the background as soon as it answers (incident_app/startup.py).
"""

# Patch before anything imports ssl or socket: the gevent worker would patch too late otherwise.
import gevent
from gevent import monkey

monkey.patch_all()


import gc
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile

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
# gunicorn's gevent worker, answering the server's own refusals (bad request line or header, URI or
# header too long) in the contract's JSON and ending bodies that stop arriving (incident_app/http_server.py).
worker_class = "incident_app.http_server.IncidentWorker"
# One gevent worker per core serves many requests at once; WEB_CONCURRENCY overrides the count.
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
# Connections a worker holds at once. A connection costs a greenlet and a socket, not a thread: a
# high bound lets thousands of slow or stalled clients wait out their timeouts, and live-feed
# followers (SSE, WebSocket; each holds one for as long as it follows, but no database connection)
# stay connected, while everyone else is still accepted (at 1,000, 2,100 stalled bodies left no room
# for /health/live on a replica).
worker_connections = 10_000
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

def on_starting(server):
    """The master never waits for the database: each worker migrates once it answers (startup.py)."""
    # Files left by a previous run would add its counts to this one's (a reload does not come here).
    for stale in glob.glob(os.path.join(settings.prometheus_multiproc_dir, "*.db")):
        os.remove(stale)
    if settings.is_sqlite:
        # A local file is always there: migrated here, before the workers would race on it unlocked.
        migrate.upgrade(settings)


def post_fork(server, worker):
    # Before the app exists: every psycopg2 connection it opens will yield to gevent while waiting.
    from incident_app.db import make_psycopg_cooperative

    make_psycopg_cooperative()


def post_worker_init(worker):
    worker.request_timeout = settings.request_timeout_seconds
    # Each worker runs the background work in a greenlet (outbox retries, escalation, key expiry);
    # safe with any number of workers and replicas because every claim goes through the database.
    # Serving starts now whatever the database is doing; the schema is brought to head in a greenlet
    # once it answers, and only then does the background work begin.
    extensions = getattr(worker.wsgi, "extensions", {})
    background = extensions.get("background")
    if background is None:
        worker.log.warning("the WSGI app is not the incident service: no background work started")
    else:
        extensions["startup"].start(then=background.start if extensions["settings"].background_work else None)
    feed = extensions.get("feed")
    if feed is not None:
        # Its listening connection is up before the first follower comes (and retried, like the
        # schema, while the database does not answer).
        feed.start()
        gevent.spawn(_end_streams_on_shutdown, worker, feed)
    # What the worker built to serve (modules, the app, its engine and schemas) lives as long as the
    # worker: out of the collector's sight, a full collection no longer walks all of it while every
    # request waits. Measured under list load: full collections took 73 ms before, 1.4–2.9 ms after,
    # and list p99 fell from 76–80 to 63–67 ms in alternating runs.
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
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    if "startup" in extensions:
        extensions["startup"].stop()
    background = extensions.get("background")
    if background is not None:
        background.stop(timeout=2)


def child_exit(server, worker):
    # A dead worker's counters and histograms keep counting in the sums; its live gauges must go.
    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server):
    if _fresh_multiproc_dir is not None:
        shutil.rmtree(_fresh_multiproc_dir, ignore_errors=True)
