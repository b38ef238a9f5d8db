"""Request parsing for the API blueprints: webargs' parser, with every undecodable body a 400."""

from __future__ import annotations

import json
from typing import Any

import flask
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge


class StrictJsonParser(FlaskParser):
    """JSON that Python's decoder refuses for its own limits (a number of thousands of digits, nesting
    deeper than the recursion limit) is invalid input like any other bad JSON: a 400, never a 500."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        body = req.get_data(cache=True)
        if _beyond_the_limit(req, body):
            raise RequestEntityTooLarge()
        try:
            return core.parse_json(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise  # webargs answers these itself
        except (ValueError, RecursionError) as exc:
            self._handle_invalid_json_error(exc, req)


def _beyond_the_limit(req: flask.Request, body: bytes) -> bool:
    """Whether a body without Content-Length (chunked) went on past MAX_CONTENT_LENGTH: werkzeug
    stops reading it at the limit and hands over the first part, which would then be bad JSON."""
    limit = req.max_content_length
    if req.content_length is not None or limit is None or len(body) < limit:
        return False
    return bool(req.environ["wsgi.input"].read(1))
