"""Public routes (Mondo conventions: form-encoded bodies, typed error codes): devices and the feed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse

from services.notifications.models import Device, FeedItem
from services.notifications.service import FeedItemRequest, NotificationService
from shared.auth import Identity, require_identity
from shared.errors import bad_request

User = Annotated[Identity, Depends(require_identity)]

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


def public_router(service: NotificationService) -> APIRouter:
    api = APIRouter(tags=["notifications"])

    @api.post("/devices", status_code=201)
    async def register_device(
        who: User,
        platform: Annotated[str, Form()],
        token: Annotated[str, Form()],
        app_version: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        """Register one of your phones for push notifications (platform apns or fcm). Registering a
        token again answers 200 with the same device, active again."""
        device, created = await service.register_device(who.user_id, platform, token.strip(), app_version)
        return JSONResponse({"device": device_json(device)}, status_code=201 if created else 200)

    @api.get("/devices")
    async def list_devices(who: User) -> dict[str, Any]:
        """Your registered devices, oldest first (deactivated ones show why)."""
        return {"devices": [device_json(d) for d in await service.devices(who.user_id)]}

    @api.delete("/devices/{device_id}")
    async def delete_device(who: User, device_id: str) -> dict[str, Any]:
        """Stop pushing to a device and forget it."""
        await service.delete_device(who.user_id, device_id)
        return {}

    @api.post(
        "/feed",
        openapi_extra={
            "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": FEED_FORM}}}
        },
    )
    async def create_feed_item(who: User, request: Request) -> dict[str, Any]:
        """Mondo's `POST /feed`: put an item in an account's feed, and push it to the owner's phones."""
        form = await request.form()
        sent = {k: v.strip() for k, v in form.items() if isinstance(v, str) and v.strip()}

        def required(name: str) -> str:
            if name not in sent:
                raise bad_request("missing_param", f"{name} is required", param=name)
            return sent[name]

        req = FeedItemRequest(
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
        await service.create_feed_item(who.user_id, who.client_id, req)
        return {}

    @api.get("/feed")
    async def list_feed(who: User, account_id: Annotated[str, Query()]) -> dict[str, Any]:
        """An account's feed items, newest first."""
        return {"feed_items": [feed_item_json(f) for f in await service.feed(who.user_id, account_id)]}

    return api
