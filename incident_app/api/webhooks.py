"""/api/v1/webhooks: subscribe a URL to the feed's events, list, read and delete subscriptions."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import current_app, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields, validate

from incident_app import schemas
from incident_app.api.parsing import StrictJsonParser
from incident_app.service import WebhookService

MAX_URL = 2048

blp = Blueprint(
    "webhooks", __name__, url_prefix="/api/v1/webhooks",
    description="Webhooks: every matching event POSTed to a URL, signed per the Standard Webhooks "
                "specification, retried for 24 hours.",
)
blp.ARGUMENTS_PARSER = StrictJsonParser()


class WebhookCreateSchema(ma.Schema):
    url = schemas.Text(
        required=True, strip=True,
        validate=[validate.Length(1, MAX_URL), validate.URL(schemes={"http", "https"}, require_tld=False)],
        metadata={"description": f"http or https, at most {MAX_URL} characters.",
                  "example": "https://chat-bot.example.com/hooks/incidents"},
    )
    description = schemas.Text(allow_none=True, validate=validate.Length(max=1000), metadata={"example": "chat bot"})
    types = fields.List(
        fields.String(validate=validate.OneOf(schemas.EVENT_TYPES)), allow_none=True, validate=validate.Length(min=1),
        metadata={"description": "The event types to deliver; absent or null: all.",
                  "example": ["created", "acknowledged", "resolved"]},
    )
    service = schemas.Text(allow_none=True, strip=True, validate=validate.Length(1, 255),
                           metadata={"description": "Only events of this service's incidents."})
    severity = schemas.severity_field(allow_none=True, description="Only events of incidents of this severity.")


class WebhookSchema(ma.Schema):
    id = fields.UUID(required=True)
    url = fields.String(required=True)
    description = fields.String(allow_none=True)
    types = fields.List(fields.String(), allow_none=True, metadata={"description": "null: every type."})
    service = fields.String(allow_none=True)
    severity = fields.String(allow_none=True)
    created_at = schemas.Timestamp(required=True)
    last_delivery_at = schemas.Timestamp(allow_none=True, metadata={"description": "When the last attempt ended."})
    last_status = fields.String(
        allow_none=True, metadata={"enum": ["sent", "failed", "given_up"],
                                   "description": "How the last attempt went; null before the first."},
    )
    pending = fields.Integer(required=True, metadata={"description": "Deliveries waiting (first try or retry)."})


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(
        required=True,
        metadata={"description": "Signs every delivery (`whsec_` + base64). Shown in this answer only: keep it.",
                  "example": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    )


class WebhookListSchema(ma.Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema), required=True)


def webhook_service() -> WebhookService:
    return current_app.extensions["webhook_service"]


@blp.route("")
class Webhooks(MethodView):
    @blp.response(200, WebhookListSchema)
    def get(self):
        """List webhooks

        Every subscription, oldest first, without its secret.
        """
        return {"webhooks": webhook_service().list_webhooks()}

    @blp.arguments(WebhookCreateSchema())
    @blp.response(201, WebhookCreatedSchema, headers={
        "Location": {"description": "The webhook's URL.", "schema": {"type": "string"}},
    })
    def post(self, body: dict[str, Any]):
        """Subscribe a URL

        From now on, every timeline event matching `types`, `service` and `severity` is POSTed to
        `url` as the live feed's event JSON, with the headers `webhook-id` (the same on every retry),
        `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256>` with `secret`). A 2xx
        within HTTP_CLIENT_TIMEOUT delivers it; anything else is retried with backoff for 24 hours.
        """
        webhook = webhook_service().subscribe(**body)
        return webhook, 201, {"Location": url_for("webhooks.Webhook", webhook_id=webhook["id"])}


@blp.route("/<uuid:webhook_id>")
class Webhook(MethodView):
    @blp.response(200, WebhookSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, webhook_id: uuid.UUID):
        """Read a webhook

        With how its deliveries go: `last_delivery_at`, `last_status` and how many are `pending`.
        """
        return webhook_service().get_webhook(webhook_id)

    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, webhook_id: uuid.UUID):
        """Delete a webhook

        It receives nothing more: its deliveries still waiting are dropped.
        """
        webhook_service().unsubscribe(webhook_id)
