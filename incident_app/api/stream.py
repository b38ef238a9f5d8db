"""The live feed over HTTP: GET /api/v1/stream (Server-Sent Events) and /ws/incidents (WebSocket)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import marshmallow as ma
from flask import Response, current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from flask_sock import Sock
from marshmallow import fields, validate

from incident_app import schemas
from incident_app.feed.cursor import Cursor, MalformedCursor
from incident_app.feed.hub import FeedFilters, FeedHub, Follower, Overflowed
from incident_app.feed.metrics import StreamMetrics

blp = Blueprint(
    "stream", __name__, url_prefix="/api/v1/stream",
    description="The live feed: every timeline event as it commits, with a cursor to resume from.",
)
sock = Sock()

RETRY_MS = 3000
HEARTBEAT_SECONDS = 15.0  # SSE comment lines through proxies and load balancers (contract 7)
# A WebSocket follower is looked at this often while idle: a client gone is noticed, its messages dropped.
WEBSOCKET_IDLE_CHECK_SECONDS = 5.0
WEBSOCKET_PING_SECONDS = 25


class EventTypes(fields.String):
    """A comma-separated list of event types."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> frozenset[str]:
        text = super()._deserialize(value, attr, data, **kwargs)
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = sorted(set(names) - set(schemas.EVENT_TYPES))
        if not names or unknown:
            raise ma.ValidationError(f"Must be a comma-separated list of: {', '.join(schemas.EVENT_TYPES)}.")
        return frozenset(names)


class CursorField(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Cursor:
        try:
            return Cursor.parse(super()._deserialize(value, attr, data, **kwargs))
        except MalformedCursor:
            raise ma.ValidationError("Not a cursor of this feed: give an event's `cursor` as it was sent.") from None


class StreamQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE  # access_token among them (access.py)

    service = schemas.Text(validate=validate.Length(1, 255))
    severity = schemas.severity_field()
    types = EventTypes(metadata={"description": "Comma-separated event types; absent: all.",
                                 "example": "created,acknowledged,resolved"})
    after = CursorField(metadata={"description": "Resume after this event's `cursor` (as `Last-Event-ID` does)."})


def feed() -> FeedHub:
    return current_app.extensions["feed"]


def stream_metrics() -> StreamMetrics:
    return current_app.extensions["stream_metrics"]


def _follow(query: dict[str, Any]) -> Follower:
    """A follower of the query's filters, from `after` or the Last-Event-ID header (a 422 if malformed)."""
    after = query.get("after")
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    if after is None and last_event_id:
        try:
            after = Cursor.parse(last_event_id)
        except MalformedCursor:
            abort(422, message="invalid input: see errors",
                  errors={"Last-Event-ID": ["Not a cursor of this feed: give an event's `cursor` as it was sent."]})
    filters = FeedFilters(service=query.get("service"), severity=query.get("severity"), types=query.get("types"))
    if feed().stopping:
        abort(503, message="this worker is shutting down: reconnect", headers={"Retry-After": "1"})
    return feed().follow(filters, after)


@blp.route("")
class Stream(MethodView):
    @blp.arguments(StreamQuerySchema(), location="query")
    @blp.response(
        200, description="Server-Sent Events: `retry: 3000`, then per event `id: <cursor>`, `event: <type>`, "
        "`data: <event JSON>`; a comment line every 15 s while idle.",
        content_type="text/event-stream",
    )
    def get(self, query: dict[str, Any]):
        """Follow every change as it commits (Server-Sent Events)

        Every timeline event, as `{"cursor", "type", "incident_id", "created_at", "actor", "details",
        "incident"}`. Resume with `Last-Event-ID` (a browser's `EventSource` sends it by itself) or
        `?after=<cursor>`: what was missed is replayed, then the stream goes live, with nothing missed
        or repeated. With `API_KEYS` set, `?access_token=<key>` serves where headers cannot be sent.
        A follower that lets 1,000 events wait is disconnected; it resumes with its cursor.
        """
        follower = _follow(query)
        response = Response(_server_sent_events(follower, stream_metrics()), mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # a proxy that buffers would hold events back
        return response


def _server_sent_events(follower: Follower, metrics: StreamMetrics) -> Iterator[bytes]:
    metrics.joined("sse")
    batches = follower.batches(heartbeat=HEARTBEAT_SECONDS)
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        for batch in batches:
            if not batch:
                yield b": keep-alive\n\n"
                continue
            yield b"".join(event.server_sent_event for event in batch)
            metrics.sent("sse", len(batch))
    except Overflowed:
        yield b": too far behind; reconnect with Last-Event-ID\n\n"
    finally:
        batches.close()  # leaves the relay now, not when the garbage is collected
        metrics.left("sse")


@sock.route("/ws/incidents")
def websocket_feed(ws) -> None:
    """The feed in the platform's first version's message shape; client messages are ignored."""
    query = StreamQuerySchema().load(request.args)  # the before_request hook validated it already
    follower = _follow(query)
    metrics = stream_metrics()
    metrics.joined("websocket")
    batches = follower.batches(heartbeat=WEBSOCKET_IDLE_CHECK_SECONDS)
    try:
        for batch in batches:
            while ws.receive(timeout=0) is not None:
                pass  # ignored, and not left to pile up
            if not ws.connected:
                return
            for event in batch:
                ws.send(event.websocket_text)
            if batch:
                metrics.sent("websocket", len(batch))
    except Overflowed:
        ws.close(reason=1008, message="too far behind; reconnect with ?after=<last cursor>")
    finally:
        batches.close()
        metrics.left("websocket")


def validate_websocket_query() -> None:
    """Before the upgrade: bad filters or cursor answer 422 JSON, not a socket that closes."""
    if request.path != "/ws/incidents":
        return
    errors = StreamQuerySchema().validate(request.args)
    if errors:
        abort(422, message="invalid input: see errors", errors=errors)
    if feed().stopping:
        abort(503, message="this worker is shutting down: reconnect", headers={"Retry-After": "1"})


def init_app(app, api) -> None:
    api.register_blueprint(blp)
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"ping_interval": WEBSOCKET_PING_SECONDS})
    sock.init_app(app)
    app.before_request(validate_websocket_query)
