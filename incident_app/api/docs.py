"""The OpenAPI document's shared parts (error responses with examples, responses every operation
can give) and /docs: Swagger UI whose assets the service serves itself, so it renders offline."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import marshmallow as ma
from apispec import BasePlugin
from flask import Blueprint, Flask
from flask_smorest import Api
from marshmallow import fields
from swagger_ui_bundle import swagger_ui_path

from incident_app.errors import error_body

DOCS_PATH = "docs"
ASSETS_URL = f"/{DOCS_PATH}/assets/"

# Flask config read by flask-smorest when the Api is created.
CONFIG: dict[str, Any] = {
    "OPENAPI_SWAGGER_UI_PATH": DOCS_PATH,
    "OPENAPI_SWAGGER_UI_URL": ASSETS_URL,
    "OPENAPI_SWAGGER_UI_CONFIG": {"deepLinking": True, "displayRequestDuration": True, "tryItOutEnabled": False},
}

DESCRIPTION = """\
Owns an incident from the alert that opens it to its resolution: creation with on-call assignment
and notification, listing and analytics, acknowledgement and resolution (MTTA/MTTR), notes.

Every error, on every path, is JSON: `{"code": 404, "status": "Not Found", "message": "…"}`, plus
`errors` (field → messages) for validation errors. With `API_KEYS` set, every `/api/v1` call needs
`Authorization: Bearer <key>`; the probes, `/metrics` and these docs stay open.
"""


class ErrorSchema(ma.Schema):
    code = fields.Integer(required=True, metadata={"description": "The HTTP status code.", "example": 404})
    status = fields.String(required=True, metadata={"description": "The HTTP status phrase.", "example": "Not Found"})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a person."})
    errors = fields.Dict(
        keys=fields.String(), values=fields.List(fields.String()),
        metadata={"description": "Validation errors only: each offending field with its messages."},
    )


ERROR_EXAMPLES: dict[int, dict[str, Any]] = {
    400: error_body(400, "cannot change status from resolved to acknowledged (resolved is final)",
                    {"status": ["resolved → acknowledged is not allowed"]}),
    401: error_body(401, "missing or invalid API key: send Authorization: Bearer <key>"),
    404: error_body(404, "incident inc-3fa85f6457174562 not found"),
    405: error_body(405, "The method is not allowed for the requested URL."),
    409: error_body(409, "a request with this Idempotency-Key is still in progress"),
    413: error_body(413, "The data value transmitted exceeds the capacity limit."),
    422: error_body(422, "invalid input: see errors", {"severity": ["Must be one of: critical, high, medium, low."],
                                                       "bogus": ["Unknown field."]}),
    500: error_body(500, "internal server error"),
    503: error_body(503, "database unavailable, try again shortly"),
}

_DESCRIPTIONS = {
    401: "`API_KEYS` is set and the request has no valid `Authorization: Bearer <key>`.",
    413: "The body is larger than 1 MiB.",
    422: "A field is missing, unknown, of the wrong type or out of range; `errors` names each one.",
    503: "The database does not answer (for analytics also: every computation this worker runs at once stayed "
         "taken for 20 s); retry after `Retry-After` seconds.",
}


class IncidentApi(Api):
    """flask-smorest's Api with the service's error shape (it adds `errors`) in the document."""

    ERROR_SCHEMA = ErrorSchema


class CommonResponses(BasePlugin):
    """Adds to every operation the errors any request can meet, whatever its view declares."""

    def operation_helper(self, path: str | None = None, operations: dict | None = None, **kwargs: Any) -> None:
        for method, operation in (operations or {}).items():
            responses = operation.setdefault("responses", {})
            codes = [500]
            if path and path.startswith("/api/"):
                codes += [401, 503]
                if method in ("post", "put", "patch"):
                    codes += [413, 422]
            for code in codes:
                if code not in responses and str(code) not in responses:
                    responses[code] = HTTPStatus(code).name


SPEC_KWARGS: dict[str, Any] = {"extra_plugins": [CommonResponses()], "info": {"description": DESCRIPTION}}


def document_errors(api: Api) -> None:
    """Give the error responses flask-smorest registers an example a client author can work from."""
    for code, example in ERROR_EXAMPLES.items():
        api.spec.components.response(
            HTTPStatus(code).name,
            {
                "description": _DESCRIPTIONS.get(code, HTTPStatus(code).phrase),
                "content": {"application/json": {"schema": ErrorSchema, "example": example}},
            },
            lazy=True,
        )


def register_docs_assets(app: Flask) -> None:
    """Swagger UI's JavaScript and CSS, from the swagger-ui-bundle package: no CDN needed."""
    assets = Blueprint("docs_assets", __name__, static_folder=str(swagger_ui_path), static_url_path=ASSETS_URL)
    app.register_blueprint(assets)
