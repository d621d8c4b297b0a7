"""Notifications' request and answer shapes (Mondo conventions: form-encoded bodies, RFC 3339 times):
devices and feed items as JSON, and `POST /feed`'s form read into a FeedItemRequest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.notifications.models import Device, FeedItem
from services.notifications.service import FeedItemRequest
from shared.errors import bad_request

# `POST /feed`'s form, for the OpenAPI document (its field names, `params[title]`…, are not
# Python identifiers, so the route reads the form itself).
FEED_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["account_id", "type", "params[title]", "params[image_url]"],
    "properties": {
        "account_id": {"type": "string"},
        "type": {"type": "string", "enum": ["basic"]},
        "url": {"type": "string", "description": "opened when the item is tapped"},
        "params[title]": {"type": "string"},
        "params[image_url]": {"type": "string"},
        "params[body]": {"type": "string"},
        "params[background_color]": {"type": "string", "description": "#RRGGBB"},
        "params[title_color]": {"type": "string", "description": "#RRGGBB"},
        "params[body_color]": {"type": "string", "description": "#RRGGBB"},
    },
}


def _time(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def device_json(d: Device) -> dict[str, Any]:
    return {
        "id": d.id,
        "platform": d.platform,
        "token": d.token,
        "app_version": d.app_version,
        "active": d.active,
        "deactivation_reason": d.deactivation_reason,
        "created": _time(d.created),
    }


def feed_item_json(f: FeedItem) -> dict[str, Any]:
    params = {
        "title": f.title,
        "body": f.body,
        "image_url": f.image_url,
        "background_color": f.background_color,
        "title_color": f.title_color,
        "body_color": f.body_color,
    }
    return {
        "id": f.id,
        "account_id": f.account_id,
        "type": f.type,
        "url": f.url,
        "params": {k: v for k, v in params.items() if v is not None},
        "created": _time(f.created),
    }


def feed_item_request(form: Mapping[str, Any]) -> FeedItemRequest:
    """`POST /feed`'s form as a request: blank fields count as absent; the service checks the values."""
    sent = {k: v.strip() for k, v in form.items() if isinstance(v, str) and v.strip()}

    def required(name: str) -> str:
        if name not in sent:
            raise bad_request("missing_param", f"{name} is required", param=name)
        return sent[name]

    return FeedItemRequest(
        account_id=required("account_id"),
        type=required("type"),
        title=required("params[title]"),
        image_url=required("params[image_url]"),
        body=sent.get("params[body]"),
        url=sent.get("url"),
        background_color=sent.get("params[background_color]"),
        title_color=sent.get("params[title_color]"),
        body_color=sent.get("params[body_color]"),
    )
