"""Request parsing for the API blueprints: webargs' parser, with every undecodable body a 400."""

from __future__ import annotations

import json
from typing import Any

import flask
from webargs.flaskparser import FlaskParser


class StrictJsonParser(FlaskParser):
    """JSON that Python's decoder refuses for its own limits (a number of thousands of digits, nesting
    deeper than the recursion limit) is invalid input like any other bad JSON: a 400, never a 500."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        try:
            return super()._raw_load_json(req)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise  # webargs answers these itself
        except (ValueError, RecursionError) as exc:
            self._handle_invalid_json_error(exc, req)
