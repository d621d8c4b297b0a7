"""Card holders' routes (Mondo conventions: form-encoded bodies, `{"card": …}` answers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.cards import repository as repo
from services.cards import schemas
from services.cards.service import CardService
from shared.auth import Identity, require_identity, require_internal
from shared.db import Database
from shared.errors import bad_request

User = Annotated[Identity, Depends(require_identity)]

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CONTROLS_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spend_limit_per_transaction": {"type": "string", "description": "minor units; empty: no limit"},
        "spend_limit_per_day": {"type": "string", "description": "minor units; empty: no limit"},
        "blocked_mccs": {"type": "string", "description": "comma-separated MCCs; empty: none blocked"},
        "atm_enabled": {"type": "string", "enum": ["true", "false"]},
    },
}


def public_router(cards: CardService) -> APIRouter:
    api = APIRouter(tags=["cards"])

    @api.post("/cards", status_code=201)
    async def issue_card(
        who: User,
        account_id: Annotated[str, Form()],
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Issue a card on one of your accounts. The full card number and CVC are in this answer
        only: they are never shown again. A repeat with the same Idempotency-Key answers 200 with
        the card, without them."""
        issued = await cards.issue(who.user_id, account_id, (idempotency_key or "").strip() or None)
        if issued.pan is None or issued.cvc is None:
            return JSONResponse({"card": schemas.card_json(issued.card)}, headers=NO_STORE)
        body = schemas.issued_card_json(issued.card, issued.pan, issued.cvc)
        return JSONResponse(body, status_code=201, headers=NO_STORE)

    @api.get("/cards")
    async def list_cards(who: User, account_id: Annotated[str, Query()]) -> dict[str, Any]:
        """The cards of one of your accounts, newest first (never their numbers)."""
        return {"cards": [schemas.card_json(c) for c in await cards.cards_of(who.user_id, account_id)]}

    async def change(who: Identity, card_id: str, action: str) -> dict[str, Any]:
        return {"card": schemas.card_json(await cards.change_status(who.user_id, card_id, action))}

    @api.post("/cards/{card_id}/freeze")
    async def freeze(who: User, card_id: str) -> dict[str, Any]:
        """Decline everything but refunds until unfrozen."""
        return await change(who, card_id, "freeze")

    @api.post("/cards/{card_id}/unfreeze")
    async def unfreeze(who: User, card_id: str) -> dict[str, Any]:
        return await change(who, card_id, "unfreeze")

    @api.post("/cards/{card_id}/cancel")
    async def cancel(who: User, card_id: str) -> dict[str, Any]:
        """Cancel the card for good."""
        return await change(who, card_id, "cancel")

    @api.patch(
        "/cards/{card_id}/controls",
        openapi_extra={
            "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": CONTROLS_FORM}}}
        },
    )
    async def update_controls(who: User, card_id: str, request: Request) -> dict[str, Any]:
        """Change the card's controls. Only the fields sent change; an empty limit removes it,
        an empty `blocked_mccs` (comma-separated MCCs) unblocks every category."""
        # Read by hand: FastAPI's Form() turns an empty value into "not sent", and here empty means "clear".
        form = await request.form()
        sent = {name: value for name, value in form.items() if isinstance(value, str)}
        changes: dict[str, Any] = {}
        if (value := sent.get("spend_limit_per_transaction")) is not None:
            changes["per_transaction_limit"] = schemas.parse_limit(value, "spend_limit_per_transaction")
        if (value := sent.get("spend_limit_per_day")) is not None:
            changes["daily_limit"] = schemas.parse_limit(value, "spend_limit_per_day")
        if (value := sent.get("blocked_mccs")) is not None:
            changes["blocked_mccs"] = schemas.parse_mccs(value)
        if (value := sent.get("atm_enabled")) is not None:
            changes["atm_enabled"] = schemas.parse_bool(value, "atm_enabled")
        if not changes:
            raise bad_request(
                "missing_param", f"send at least one of {', '.join(CONTROLS_FORM['properties'])}"
            )
        return {"card": schemas.card_json(await cards.update_controls(who.user_id, card_id, changes))}

    return api


class ResolveHolds(BaseModel):
    network_transaction_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        max_length=10_000
    )


def internal_router(db: Database) -> APIRouter:
    """Service-to-service routes: accounts resolving its provisional holds (decision 0031)."""
    api = APIRouter(prefix="/internal", tags=["internal"], dependencies=[Depends(require_internal)])

    @api.post("/authorisations/resolve")
    async def resolve_holds(body: ResolveHolds) -> dict[str, list[str]]:
        """Which of these holds an approved authorisation stands behind (`backed`), and which not
        (`unbacked`). Final: an id not recorded yet is closed with a voided authorisation (answered 91
        to a repeat), so a batch still in flight can no longer record it."""
        ids = sorted(set(body.network_transaction_ids))
        async with db.fast_transaction() as tx:
            await repo.close_unrecorded(tx, ids)
            backed = await repo.backed_holds(tx, ids)
        return {"backed": sorted(backed), "unbacked": [i for i in ids if i not in backed]}

    return api
