"""Owners' routes (Mondo conventions: form-encoded bodies, `{"webhook": …}` answers)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query
from fastapi.responses import JSONResponse

from services.webhooks import schemas
from services.webhooks.service import Secrets, WebhookService
from shared.auth import Identity, require_identity
from shared.errors import bad_request

User = Annotated[Identity, Depends(require_identity)]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def parse_time(value: str, param: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise bad_request("bad_param", f"{param} must be an RFC 3339 time", param=param) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def secrets_json(s: Secrets) -> dict[str, Any]:
    body: dict[str, Any] = {"secret": s.secret}
    if s.previous is not None:
        body["previous_secret"] = s.previous
        body["previous_secret_expires"] = schemas.rfc3339(s.previous_expires_at)
    return body


def public_router(webhooks: WebhookService) -> APIRouter:
    api = APIRouter(tags=["webhooks"])

    @api.post("/webhooks")
    async def register(
        who: User, account_id: Annotated[str, Form()], url: Annotated[str, Form()]
    ) -> JSONResponse:
        """Subscribe `url` to the account's transaction events. The answer carries the signing
        secret (`whsec_…`); `GET /webhooks/{id}/secret` shows it again to the owner."""
        webhook, secret = await webhooks.register(who.user_id, account_id.strip(), url)
        body = {"webhook": {**schemas.webhook_json(webhook), "secret": secret}}
        return JSONResponse(body, headers=NO_STORE)

    @api.get("/webhooks")
    async def list_webhooks(who: User, account_id: Annotated[str, Query()]) -> dict[str, Any]:
        return {
            "webhooks": [schemas.webhook_json(w) for w in await webhooks.of_account(who.user_id, account_id)]
        }

    @api.delete("/webhooks/{webhook_id}")
    async def delete(who: User, webhook_id: str) -> dict[str, Any]:
        await webhooks.delete(who.user_id, webhook_id)
        return {}

    @api.get("/webhooks/{webhook_id}/secret")
    async def secret(who: User, webhook_id: str) -> JSONResponse:
        """The signing secret, and the previous one while it still signs after a rotation."""
        return JSONResponse(secrets_json(await webhooks.secrets(who.user_id, webhook_id)), headers=NO_STORE)

    @api.post("/webhooks/{webhook_id}/secret/rotate")
    async def rotate(
        who: User, webhook_id: str, overlap_seconds: Annotated[float | None, Form()] = None
    ) -> JSONResponse:
        """A new signing secret. For `overlap_seconds` (default WEBHOOKS_ROTATION_OVERLAP_SECONDS)
        every message is signed with both, so receivers can switch without missing one."""
        rotated = await webhooks.rotate(who.user_id, webhook_id, overlap_seconds)
        return JSONResponse(secrets_json(rotated), headers=NO_STORE)

    @api.get("/webhooks/{webhook_id}/deliveries")
    async def deliveries(
        who: User,
        webhook_id: str,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        before: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        """The newest deliveries first, each with its attempts (status code, latency, error)."""
        until = parse_time(before, "before") if before else None
        history = await webhooks.history(who.user_id, webhook_id, limit, until)
        return {"deliveries": [schemas.delivery_json(d, attempts) for d, attempts in history]}

    @api.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")
    async def retry(who: User, webhook_id: str, delivery_id: str) -> dict[str, Any]:
        """Send this delivery again now, whatever its state (its retry schedule starts over)."""
        delivery, attempts = await webhooks.retry(who.user_id, webhook_id, delivery_id)
        return {"delivery": schemas.delivery_json(delivery, attempts)}

    @api.post("/webhooks/{webhook_id}/recover")
    async def recover(who: User, webhook_id: str, since: Annotated[str, Query()]) -> dict[str, Any]:
        """Re-send every failed delivery created since `since` (RFC 3339); re-enables a disabled webhook."""
        count = await webhooks.recover(who.user_id, webhook_id, parse_time(since, "since"))
        return {"recovered": count}

    return api
