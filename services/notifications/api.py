"""Public routes (Mondo conventions: form-encoded bodies, typed error codes): devices and the feed.

Each route reads its request, calls NotificationService, and answers with schemas' shapes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse

from services.notifications import schemas
from services.notifications.service import NotificationService
from shared.auth import Identity, require_identity

User = Annotated[Identity, Depends(require_identity)]


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
        return JSONResponse({"device": schemas.device_json(device)}, status_code=201 if created else 200)

    @api.get("/devices")
    async def list_devices(who: User) -> dict[str, Any]:
        """Your registered devices, oldest first (deactivated ones show why)."""
        return {"devices": [schemas.device_json(d) for d in await service.devices(who.user_id)]}

    @api.delete("/devices/{device_id}")
    async def delete_device(who: User, device_id: str) -> dict[str, Any]:
        """Stop pushing to a device and forget it."""
        await service.delete_device(who.user_id, device_id)
        return {}

    @api.post(
        "/feed",
        openapi_extra={
            "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": schemas.FEED_FORM}}}
        },
    )
    async def create_feed_item(who: User, request: Request) -> dict[str, Any]:
        """Mondo's `POST /feed`: put an item in an account's feed, and push it to the owner's phones."""
        req = schemas.feed_item_request(await request.form())
        await service.create_feed_item(who.user_id, who.client_id, req)
        return {}

    @api.get("/feed")
    async def list_feed(who: User, account_id: Annotated[str, Query()]) -> dict[str, Any]:
        """An account's feed items, newest first."""
        items = await service.feed(who.user_id, account_id)
        return {"feed_items": [schemas.feed_item_json(f) for f in items]}

    return api
