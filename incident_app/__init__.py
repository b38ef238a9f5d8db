"""Incident Management Service: owns an incident from the alert that opens it to its resolution."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import timedelta

import alembic.util
import click
import sqlalchemy.exc
from flask import Flask, Response, request

from incident_app import migrate
from incident_app.access import install_api_keys
from incident_app.analytics_cache import AnalyticsCache, computations_for_pool
from incident_app.api import docs, health, incidents, stream, webhooks
from incident_app.api import metrics as metrics_endpoint
from incident_app.background import BackgroundWork
from incident_app.cors import install_cors
from incident_app.db import create_engine
from incident_app.errors import register_error_handlers
from incident_app.escalation import Escalator
from incident_app.feed.hub import FeedHub
from incident_app.feed.metrics import StreamMetrics
from incident_app.feed.notifier import NOTIFY_AFTER_COMMIT, CommitNotifier
from incident_app.flows import IncidentOpening
from incident_app.idempotency import IdempotencyKeys
from incident_app.logs import configure_logging, install_request_logging
from incident_app.metrics import IncidentMetrics, OpenIncidentsCollector, exposition_registry, install_http_metrics
from incident_app.outbox import NotificationOutbox
from incident_app.peers.http import PeerClient, peer_pools
from incident_app.peers.notify import NotificationClient
from incident_app.peers.oncall import OnCallClient
from incident_app.probes import ProbeDatabase, create_probe_engine
from incident_app.service import IncidentService, WebhookService, utcnow
from incident_app.settings import Settings
from incident_app.startup import SchemaState, Startup, install_schema_gate
from incident_app.store import open_store
from incident_app.webhooks import WebhookSender

MAX_BODY_BYTES = 1 << 20


class IncidentFlask(Flask):
    def make_default_options_response(self) -> Response:
        """Allow: the methods of the route that serves the path, as Flask's default does, but not
        also those of other routes the path would fit (PATCH of /incidents/<id> for /analytics)."""
        response = super().make_default_options_response()
        if request.url_rule is not None and request.url_rule.methods:
            response.allow.clear()
            response.allow.update(request.url_rule.methods)
        return response


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)

    app = IncidentFlask(__name__)
    app.config.update(
        API_TITLE="Incident Management Service",
        API_VERSION=settings.app_version,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        **docs.CONFIG,
    )
    app.json.sort_keys = False
    api = docs.IncidentApi(app, spec_kwargs=docs.SPEC_KWARGS)
    docs.document_errors(api)
    api.register_blueprint(incidents.blp)
    api.register_blueprint(webhooks.blp)
    api.register_blueprint(health.blp)
    api.register_blueprint(metrics_endpoint.blp)
    docs.register_docs_assets(app)
    register_error_handlers(app)  # after Api(), which installs its own HTTP error handler
    install_request_logging(app)
    install_api_keys(app, settings)
    stream.init_app(app, api)  # after the key check, so a WebSocket without a key is a 401 first
    install_cors(app, settings)

    # PostgreSQL: the feed's NOTIFY after each write's commit, not inside it (feed/notifier.py).
    engine = create_engine(settings, options=NOTIFY_AFTER_COMMIT)
    feed_notifier = None if settings.is_sqlite else CommitNotifier(create_engine(replace(settings, db_pool_max=1)))
    if feed_notifier is not None:
        feed_notifier.watch(engine)
    http = peer_pools()
    metrics = IncidentMetrics(settings)
    install_http_metrics(app, metrics)
    probe_db = ProbeDatabase(create_probe_engine(settings))
    schema = SchemaState(probe_db.schema_is_current)
    install_schema_gate(app, schema)
    app.extensions.update(
        probe_db=probe_db,
        metrics_registry=exposition_registry(
            metrics, OpenIncidentsCollector(probe_db.unresolved_by_severity),
            multiprocess_dir=settings.prometheus_multiproc_dir,
        ),
    )
    oncall = OnCallClient(PeerClient(http, settings.oncall_service_url, settings.http_client_timeout))
    notifier = NotificationClient(PeerClient(http, settings.notification_service_url, settings.http_client_timeout))
    # A claimed notification is left alone for longer than one call to the Notification Service can take.
    peer_call = timedelta(seconds=settings.http_client_timeout + 5)
    outbox = NotificationOutbox(engine=engine, notifier=notifier, metrics=metrics, clock=utcnow, lease=peer_call)
    # A key reserved longer than a whole create can take (two peer calls) belongs to a dead request.
    idempotency = IdempotencyKeys(engine=engine, clock=utcnow, in_flight_for=2 * peer_call + timedelta(seconds=20))
    # The one place the database's kind is looked at: every use case runs on the store.
    store = open_store(engine)
    opening = IncidentOpening(
        store=store, oncall=oncall, outbox=outbox, metrics=metrics, clock=utcnow,
        oncall_lookup_bound=timedelta(seconds=settings.http_client_timeout),
    )
    escalator = Escalator(
        engine=engine, oncall=oncall, outbox=outbox, metrics=metrics, clock=utcnow,
        timeout=timedelta(minutes=settings.escalation_timeout_minutes),
    )
    # Each process relays the feed to its own followers through one listening connection of its own
    # (not the pool's); on SQLite the process polls its own database instead.
    listen_engine = None if settings.is_sqlite else create_engine(replace(settings, db_pool_max=1))
    app.extensions.update(
        feed=FeedHub(engine=engine, listen_engine=listen_engine, notifier=feed_notifier),
        stream_metrics=StreamMetrics(metrics.registry),
    )
    app.extensions.update(
        settings=settings,
        # Started by the gunicorn worker (gunicorn.conf.py): migrates once the database answers.
        startup=Startup(settings=settings, engine=engine, schema=schema),
        engine=engine,
        store=store,
        metrics=metrics,
        incident_service=IncidentService(
            store=store, opening=opening, idempotency=idempotency, metrics=metrics, clock=utcnow,
            alert_service_url=settings.alert_service_url,
            analytics_cache=AnalyticsCache(
                max_age=settings.analytics_cache_seconds,
                max_concurrent=computations_for_pool(settings.db_pool_max),
            ),
        ),
        # Started by the gunicorn worker (gunicorn.conf.py) or `flask background run`, never here:
        # an app built by a test or a CLI command must not start timers behind its back.
        webhook_service=WebhookService(store=store, clock=utcnow),
        background=BackgroundWork(
            outbox=outbox, escalator=escalator, idempotency=idempotency,
            escalation_every=settings.escalation_check_seconds, engine=engine,
            # Its own loop, connections and host lookups: a slow receiver delays no notification.
            webhooks=WebhookSender(
                engine=engine, timeout=settings.http_client_timeout, metrics=metrics, clock=utcnow, lease=peer_call,
            ),
        ),
    )
    _register_cli(app, settings)
    return app


def _register_cli(app: Flask, settings: Settings) -> None:
    @app.cli.group("db")
    def db() -> None:
        """Database schema commands."""

    @db.command("upgrade")
    @click.argument("revision", default="head")
    def upgrade(revision: str) -> None:
        """Bring the database schema to REVISION (default: head)."""
        # One line an operator can act on (an unknown revision, a database that does not answer),
        # not alembic's or the driver's traceback.
        try:
            migrate.check_revision(revision)
            migrate.upgrade(settings, revision)
        except alembic.util.CommandError as exc:
            raise click.ClickException(str(exc)) from None
        except sqlalchemy.exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else exc.__class__.__name__
            raise click.ClickException(f"database not reachable or refused the upgrade: {reason}") from None
        click.echo(f"database at {migrate.head_revision() if revision == 'head' else revision}")

    @app.cli.group("background")
    def background() -> None:
        """Background work: notification retries, webhook deliveries, escalation checks, idempotency
        key expiry and the folding of the list totals' counter rows."""

    @background.command("run")
    def run_background() -> None:
        """Run the background work in the foreground, for a deployment with BACKGROUND_WORK=false.

        Four jobs: notification retries from the outbox (every second), escalation checks (every
        ESCALATION_CHECK_SECONDS), idempotency key expiry (every 5 minutes) and the folding of the
        list totals' counter rows (every minute); beside them, in a loop of their own, webhook
        deliveries (and, every 5 minutes, the purge of those finished a week ago). Safe beside the
        gunicorn workers' own: every job claims its work through the database.
        """
        click.echo("background work running; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            app.extensions["background"].run()
