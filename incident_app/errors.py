"""Every domain exception and the one JSON error shape every path (and the OpenAPI document's
examples) answers with.

`{"code": 404, "status": "Not Found", "message": "…"}`, plus `"errors": {field: [messages]}`
for validation errors. Never an HTML page, never a stack trace.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from flask import Flask, jsonify
from werkzeug.exceptions import Conflict, HTTPException, UnprocessableEntity

log = logging.getLogger(__name__)


class IncidentNotFound(Exception):
    def __init__(self, incident_id: str) -> None:
        super().__init__(f"incident {incident_id} not found")


class WebhookNotFound(Exception):
    def __init__(self, webhook_id: object) -> None:
        super().__init__(f"webhook {webhook_id} not found")


class InvalidTransition(Exception):
    """A status change the lifecycle forbids (lifecycle.plan_transition); says what would have been
    allowed instead."""

    def __init__(self, current: str, requested: str, *, allowed: tuple[str, ...]) -> None:
        self.current = current
        self.requested = requested
        hint = f"allowed from {current}: {', '.join(allowed)}" if allowed else f"{current} is final"
        super().__init__(f"cannot change status from {current} to {requested} ({hint})")


class NothingToUpdate(Exception):
    def __init__(self) -> None:
        super().__init__("nothing to update: give at least one of status, assigned_to, note")


class IdempotencyKeyReused(UnprocessableEntity):
    description = "this Idempotency-Key was used with a different request body"


class IdempotencyKeyInFlight(Conflict):
    description = "a request with this Idempotency-Key is still being processed; retry shortly"


class DedupKeyContended(Exception):
    """Each round of a create with a dedup_key found the key's incident resolved between its two writes."""

    def __init__(self) -> None:
        super().__init__("the incident of this dedup_key was resolved again and again while this request was "
                         "grouped into it; retry shortly")


class Unauthorized(Exception):
    def __init__(self) -> None:
        super().__init__("missing or invalid API key: send Authorization: Bearer <key>")


class AnalyticsBusy(Exception):
    """Analytics computations were all taken for longer than a request waits for one."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"analytics are busy (no turn within {waited:g} s); try again shortly")


def error_body(code: int, message: str, errors: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if errors:
        body["errors"] = errors
    return body


def _respond(code: int, message: str, errors: dict[str, Any] | None = None, headers: dict | None = None):
    response = jsonify(error_body(code, message, errors))
    response.status_code = code
    response.headers.update(headers or {})
    return response


def _flatten(errors: dict[str, Any]) -> dict[str, list[str]]:
    """webargs nests errors by location ({"json": {"title": [...]}}): the client wants fields, each
    with a list of messages as the OpenAPI document says; a list's items say which they are
    ({"alert_ids": {"0": [...]}} becomes {"alert_ids": ["item 0: …"]})."""
    flat: dict[str, list[str]] = {}
    for location, fields in errors.items():
        if isinstance(fields, dict):
            for field, messages in fields.items():
                flat[str(field)] = _messages(messages)
        else:
            flat[location] = _messages(fields)
    return flat


def _messages(value: Any, where: str = "") -> list[str]:
    if isinstance(value, dict):
        return [message for key, inner in value.items()
                for message in _messages(inner, f"{where}item {key}: " if str(key).isdigit() else f"{where}{key}: ")]
    if isinstance(value, list | tuple):
        return [message for inner in value for message in _messages(inner, where)]
    return [f"{where}{value}"]


def handle_http_exception(error: HTTPException):
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    code = error.code or 500
    if errors:
        errors = _flatten(errors)
        message = data.get("message") or "invalid input: see errors"
    else:
        message = data.get("message") or error.description or HTTPStatus(code).phrase
    headers = dict(data.get("headers") or {})
    if code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    return _respond(code, message, errors, headers)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(IncidentNotFound, lambda e: _respond(404, str(e)))
    app.register_error_handler(WebhookNotFound, lambda e: _respond(404, str(e)))
    app.register_error_handler(NothingToUpdate, lambda e: _respond(400, str(e)))
    app.register_error_handler(
        InvalidTransition,
        lambda e: _respond(400, str(e), {"status": [f"{e.current} → {e.requested} is not allowed"]}),
    )
    app.register_error_handler(
        Unauthorized, lambda e: _respond(401, str(e), headers={"WWW-Authenticate": "Bearer"})
    )

    app.register_error_handler(DedupKeyContended, lambda e: _respond(503, str(e), headers={"Retry-After": "1"}))

    @app.errorhandler(AnalyticsBusy)
    def _analytics_busy(error: AnalyticsBusy):
        # Load, not a failure of the service: the database is fine and the rest is being answered.
        log.warning("%s", error)
        return _respond(503, str(error), headers={"Retry-After": "5"})

    @app.errorhandler(sa.exc.DataError)
    def _unstorable(error: sa.exc.DataError):
        # Validation should have caught it; if the database still refuses a value, it is the input.
        log.warning("database refused a value: %s", error.orig)
        return _respond(422, "a value cannot be stored")

    @app.errorhandler(sa.exc.OperationalError)
    @app.errorhandler(sa.exc.InterfaceError)
    @app.errorhandler(sa.exc.TimeoutError)
    def _database_unavailable(error: Exception):
        log.error("database unavailable: %s", error.__class__.__name__, exc_info=error)
        return _respond(503, "database unavailable, try again shortly", headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        return _respond(500, "internal server error")
