"""Cross-origin access to /api/* for the platform's web UI, from the origins of CORS_ORIGINS."""

from __future__ import annotations

from flask import Flask, Response, request
from flask_cors import CORS

from incident_app.settings import Settings

EXPOSED_HEADERS = ["Location", "X-Request-ID", "Idempotent-Replayed"]


def install_cors(app: Flask, settings: Settings) -> None:
    # Registered before flask-cors's own hook, so it runs after it (Flask runs them in reverse).
    @app.after_request
    def _preflight_offers_only_the_route_methods(response: Response) -> Response:
        # flask-cors answers every preflight with one global method list; a browser should learn
        # what this route really takes (the matched rule's methods, not every rule the path fits).
        if "Access-Control-Allow-Methods" in response.headers and request.url_rule is not None:
            response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(request.url_rule.methods))
        return response

    # always_send=False: a request without an Origin is no browser's and gets no CORS headers.
    CORS(
        app, resources={r"/api/*": {"origins": list(settings.cors_origins)}},
        expose_headers=EXPOSED_HEADERS, always_send=False,
    )
