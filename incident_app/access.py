"""Bearer API keys for /api/v1 when API_KEYS is set; probes, metrics and docs stay open."""

from __future__ import annotations

import hmac
import logging

from flask import Flask, request

from incident_app.errors import Unauthorized
from incident_app.settings import Settings

log = logging.getLogger(__name__)
PROTECTED_PREFIX = "/api/v1"
WEBSOCKET_PATH = "/ws/incidents"
# A browser's EventSource and WebSocket cannot send headers: these two take the key in the query
# string too. The request log names routes, never URLs, so the key is not written to a log.
ACCESS_TOKEN_PATHS = frozenset({"/api/v1/stream", WEBSOCKET_PATH})


def install_api_keys(app: Flask, settings: Settings) -> None:
    if not settings.api_keys:
        if settings.is_production:
            log.warning("API_KEYS is unset: the incident API is open to anyone who can reach it")
        return
    keys = [key.encode() for key in settings.api_keys]

    @app.before_request
    def _require_api_key() -> None:
        if request.method == "OPTIONS" or not (request.path.startswith(PROTECTED_PREFIX)
                                               or request.path == WEBSOCKET_PATH):
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if request.path in ACCESS_TOKEN_PATHS and "access_token" in request.args:
            scheme, token = "bearer", request.args["access_token"]
        supplied = token.strip().encode("utf-8", "surrogateescape")
        # Compare against every key, always, so timing says nothing about which one nearly matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(supplied, key)
        if scheme.lower() != "bearer" or not matched:
            raise Unauthorized()
