"""The service's gunicorn worker: gunicorn's gevent worker with two promises of the contract kept
where only the server can keep them.

- What gunicorn refuses before the application sees it (a malformed request line or header, a
  control byte in a header, a bad Content-Length, a URI or a header too long) is answered in the
  contract's JSON error shape instead of gunicorn's HTML page.
- A request body that stops arriving ends at `request_timeout` seconds after its headers (408
  JSON, then the connection is closed) instead of holding a connection of the worker forever.
  Answered here, not by the application: the body's last read raises through it.
  Headers that stop arriving are closed by gunicorn itself after `keepalive` seconds (its gevent
  worker reads every request's headers under that timeout).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import gevent
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.ggevent import GeventWorker

from incident_app import MAX_BODY_BYTES
from incident_app.errors import error_body

DEFAULT_REQUEST_TIMEOUT = 30.0

# gunicorn's refusals with a status of their own; any other refusal of a request is a 400.
_REFUSAL_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (http_errors.LimitRequestLine, 414),
    (http_errors.LimitRequestHeaders, 431),
    (http_errors.UnsupportedTransferCoding, 501),
    (http_errors.ExpectationFailed, 417),
    (http_errors.ForbiddenProxyRequest, 403),
)
# A header the application produced is not the client's fault (gunicorn answers 500 for those too).
_APPLICATION_FAULTS = (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)


def refusal_status(exc: BaseException) -> int | None:
    """The status for a request gunicorn refused while reading it, or None when `exc` is not a
    refusal of the client's request (a failure of the server or the application: 500)."""
    if isinstance(exc, _APPLICATION_FAULTS) or not isinstance(exc, http_errors.ParseException):
        return None
    for kind, status in _REFUSAL_STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def json_error_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying the contract's error body; the connection closes after it."""
    body = json.dumps(error_body(status, message)).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class BodyTimeout(BaseException):
    """A request body that did not arrive in time. Not an Exception, so that it leaves the
    application untouched and the worker answers it (408) as it answers its other refusals:
    a thousand bodies timing out together then cost the worker a few writes each, not a request
    through Flask each (which held /health/live for seconds behind them)."""


class DeadlineBody:
    """A request body read before a deadline: a read still waiting then raises BodyTimeout."""

    def __init__(self, body: Any, deadline: float) -> None:
        self._body = body
        self._deadline = deadline

    def _before_deadline(self, read: Any, *args: Any) -> Any:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout()
        with gevent.Timeout(remaining, BodyTimeout()):
            return read(*args)

    def read(self, size: int | None = None) -> bytes:
        return self._before_deadline(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._before_deadline(self._body.readline, size)

    def readlines(self, size: int | None = None) -> list[bytes]:
        return self._before_deadline(self._body.readlines, size)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def declared_length(req: Any) -> int | None:
    """The request's Content-Length (gunicorn has checked it is one decimal number), or None."""
    for name, value in req.headers:
        if name == "CONTENT-LENGTH":
            return int(value)
    return None


class IncidentWorker(GeventWorker):
    """gunicorn's gevent worker, answering its own refusals in JSON and bounding body reads."""

    request_timeout = DEFAULT_REQUEST_TIMEOUT  # set from REQUEST_TIMEOUT_SECONDS in gunicorn.conf.py

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        if req.body is not None:
            req.body = DeadlineBody(req.body, time.monotonic() + self.request_timeout)
            length = declared_length(req)
            # Not a client waiting for "100 Continue" first: gunicorn sends it when it hands the
            # request to the application, after this read would have waited for the body.
            expects_continue = getattr(req, "_expected_100_continue", False)
            if length is not None and length <= MAX_BODY_BYTES and not expects_continue:
                # Read here, before the application: a client stalled in its body then costs a
                # waiting read, not a request through Flask up to its first read (3,000 connections
                # arriving together held /health/live for 1.4-3.5 s that way).
                req.body = io.BytesIO(req.body.read(length))
        return super().handle_request(listener_name, req, sock, addr)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status = refusal_status(exc)
        if isinstance(exc, BodyTimeout):
            status, message = 408, f"the request body did not arrive within {self.request_timeout:g} s"
            self.log.info("request body timed out from %s", (addr or ("",))[0])
        elif status is None:
            # Not the client's doing: logged with its traceback, answered 500 (as gunicorn does).
            self.log.exception("error handling a request")
            status, message = 500, "internal server error"
        else:
            self.log.warning("request refused by the HTTP server: %s %s", status, exc)
            message = str(exc) or HTTPStatus(status).phrase
        try:
            util.write_nonblock(client, json_error_response(status, message))
        except Exception:  # the client is gone: nothing to answer
            self.log.debug("could not send the error response")
