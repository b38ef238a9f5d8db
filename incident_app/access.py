"""Bearer API keys for /api/v1 when API_KEYS is set; probes, metrics and docs stay open."""

from __future__ import annotations

import hmac
import logging

from flask import Flask, request

from incident_app.errors import Unauthorized
from incident_app.settings import Settings

log = logging.getLogger(__name__)
PROTECTED_PREFIX = "/api/v1"


def install_api_keys(app: Flask, settings: Settings) -> None:
    if not settings.api_keys:
        if settings.is_production:
            log.warning("API_KEYS is unset: the incident API is open to anyone who can reach it")
        return
    keys = [key.encode() for key in settings.api_keys]

    @app.before_request
    def _require_api_key() -> None:
        if request.method == "OPTIONS" or not request.path.startswith(PROTECTED_PREFIX):
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        supplied = token.strip().encode("utf-8", "surrogateescape")
        # Compare against every key, always, so timing says nothing about which one nearly matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(supplied, key)
        if scheme.lower() != "bearer" or not matched:
            raise Unauthorized()
