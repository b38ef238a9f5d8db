"""Incident Management Service: owns an incident from the alert that opens it to its resolution."""

from __future__ import annotations

import click
from flask import Flask
from flask_cors import CORS
from flask_smorest import Api

from incident_app import migrate
from incident_app.access import install_api_keys
from incident_app.api import health, incidents
from incident_app.db import create_engine, warm_pool
from incident_app.errors import register_error_handlers
from incident_app.logs import configure_logging, install_request_logging
from incident_app.metrics import IncidentMetrics
from incident_app.peers.http import PeerClient, pooled_session
from incident_app.peers.notify import NotificationClient
from incident_app.peers.oncall import OnCallClient
from incident_app.service import IncidentService
from incident_app.settings import Settings

MAX_BODY_BYTES = 1 << 20


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)

    app = Flask(__name__)
    app.config.update(
        API_TITLE="Incident Management Service",
        API_VERSION=settings.app_version,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
    )
    app.json.sort_keys = False
    api = Api(app)
    api.register_blueprint(incidents.blp)
    api.register_blueprint(health.blp)
    register_error_handlers(app)  # after Api(), which installs its own HTTP error handler
    install_request_logging(app)
    install_api_keys(app, settings)
    CORS(app, resources={r"/api/*": {"origins": list(settings.cors_origins)}}, expose_headers=["Location", "X-Request-ID"])

    engine = create_engine(settings)
    warm_pool(engine, settings.db_pool_min)
    http = pooled_session()
    metrics = IncidentMetrics(settings)
    app.extensions.update(
        settings=settings,
        engine=engine,
        metrics=metrics,
        incident_service=IncidentService(
            engine=engine,
            oncall=OnCallClient(PeerClient(http, settings.oncall_service_url, settings.http_client_timeout)),
            notifier=NotificationClient(PeerClient(http, settings.notification_service_url, settings.http_client_timeout)),
            metrics=metrics,
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
        migrate.upgrade(settings, revision)
        click.echo(f"database at {migrate.head_revision() if revision == 'head' else revision}")
