"""Accounts' HTTP routes: the Mondo API reads, top-ups, and the internal card money path."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi.responses import JSONResponse

from services.accounts import repository as repo
from services.accounts import schemas
from services.accounts.idempotency import request_fingerprint, require_key, run_once
from services.accounts.ledger import HoldRequest
from services.accounts.service import HoldIdTaken, HoldPlacement, HoldResult, LedgerService
from shared.auth import Identity, require_identity, require_internal
from shared.db import Database
from shared.errors import BankError, not_found
from shared.money import parse_amount, parse_currency
from shared.web import json_body_doc, read_model

User = Annotated[Identity, Depends(require_identity)]


def public_router(db: Database, ledger: LedgerService) -> APIRouter:
    api = APIRouter(tags=["accounts"])

    @api.get("/accounts")
    async def list_accounts(
        who: User, account_type: Annotated[str | None, Query(max_length=64)] = None
    ) -> dict[str, Any]:
        """Your accounts; `account_type` (e.g. `uk_prepaid`) keeps only that type."""
        async with db.read() as session:
            accounts = await repo.customer_accounts(session, who.user_id)
            owner = await repo.get_user(session, who.user_id)
        if account_type:
            accounts = [a for a in accounts if a.type == account_type]
        return {"accounts": [schemas.account_json(a, owner) for a in accounts]}

    @api.get("/balance")
    async def balance(who: User, account_id: Annotated[str, Query()]) -> dict[str, Any]:
        async with db.read() as session:
            account = await ledger.owned_account(session, who.user_id, account_id)
            spend = await ledger.spend_today(session, account.id)
            pots = await ledger.pots_balance(session, account.id)
        return schemas.balance_json(account, spend, pots)

    @api.post("/topup")
    async def topup(
        who: User,
        account_id: Annotated[str, Form()],
        amount: Annotated[str, Form()],
        currency: Annotated[str, Form()],
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        key = require_key(idempotency_key)
        value, code = parse_amount(amount), parse_currency(currency)
        fingerprint = request_fingerprint(
            "POST", "/topup", {"account_id": account_id, "amount": value, "currency": code}
        )

        async with db.transaction() as session:

            async def perform() -> tuple[int, dict[str, Any]]:
                topup_id, account = await ledger.topup(session, who.user_id, account_id, value, code)
                return 201, {
                    "topup": {"id": topup_id, "account_id": account.id, "amount": value, "currency": code},
                    "balance": account.available,
                }

            status, body = await run_once(
                session, owner=who.user_id, key=key, fingerprint=fingerprint, action=perform
            )
        return JSONResponse(body, status_code=status)

    return api


def pots_router(db: Database, ledger: LedgerService) -> APIRouter:
    """Pots (Monzo's developer API) and payments between customers (decision 0037). Money moves are
    idempotent on the client's `dedupe_id`: a repeat answers what the first did; the same id with
    another request is a 422."""
    api = APIRouter(tags=["pots and payments"])

    @api.get("/pots")
    async def list_pots(who: User, current_account_id: Annotated[str, Query()]) -> dict[str, Any]:
        """The account's pots, deleted ones included (`deleted`: true)."""
        async with db.read() as session:
            pots = await ledger.pots(session, who.user_id, current_account_id)
        return {"pots": [schemas.pot_json(pot, money) for pot, money in pots]}

    @api.post("/pots", status_code=201)
    async def create_pot(
        who: User,
        current_account_id: Annotated[str, Form()],
        name: Annotated[str, Form()],
        goal_amount: Annotated[str | None, Form()] = None,
        style: Annotated[str | None, Form()] = None,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """A new, empty pot of the account (needs `Idempotency-Key`)."""
        key = require_key(idempotency_key)
        title = schemas.parse_text(name, "name", maximum=schemas.MAX_NAME)
        goal = parse_amount(goal_amount, param="goal_amount") if goal_amount not in (None, "") else None
        look = schemas.parse_style(style)
        params = {"current_account_id": current_account_id, "name": title, "goal_amount": goal, "style": look}
        fingerprint = request_fingerprint("POST", "/pots", params)
        async with db.transaction() as session:

            async def perform() -> tuple[int, dict[str, Any]]:
                pot, money = await ledger.create_pot(
                    session, who.user_id, current_account_id, name=title, style=look, goal_amount=goal
                )
                return 201, schemas.pot_json(pot, money)

            status, body = await run_once(
                session, owner=who.user_id, key=key, fingerprint=fingerprint, action=perform
            )
        return JSONResponse(body, status_code=status)

    @api.delete("/pots/{pot_id}")
    async def delete_pot(who: User, pot_id: str) -> dict[str, Any]:
        """Close an empty pot (a pot with money in it: 409 `conflict.pot_not_empty`)."""
        async with db.transaction() as session:
            pot, money = await ledger.delete_pot(session, who.user_id, pot_id)
            return schemas.pot_json(pot, money)

    async def move(
        who: Identity, pot_id: str, account_id: str, amount: str, dedupe_id: str, deposit: bool
    ) -> JSONResponse:
        value, dedupe = parse_amount(amount), schemas.parse_dedupe_id(dedupe_id)
        action = "deposit" if deposit else "withdraw"
        fingerprint = request_fingerprint(
            "PUT", f"/pots/{pot_id}/{action}", {"account_id": account_id, "amount": value}
        )
        async with db.transaction() as session:

            async def perform() -> tuple[int, dict[str, Any]]:
                pot, money = await ledger.move_pot(
                    session, who.user_id, pot_id, account_id, value, deposit=deposit
                )
                return 200, schemas.pot_json(pot, money)

            status, body = await run_once(
                session, owner=f"{who.user_id}/pots", key=dedupe, fingerprint=fingerprint, action=perform
            )
        return JSONResponse(body, status_code=status)

    @api.put("/pots/{pot_id}/deposit")
    async def deposit(
        who: User,
        pot_id: str,
        source_account_id: Annotated[str, Form()],
        amount: Annotated[str, Form()],
        dedupe_id: Annotated[str, Form()],
    ) -> JSONResponse:
        """Move `amount` from the pot's current account into the pot; answers the pot."""
        return await move(who, pot_id, source_account_id, amount, dedupe_id, True)

    @api.put("/pots/{pot_id}/withdraw")
    async def withdraw(
        who: User,
        pot_id: str,
        destination_account_id: Annotated[str, Form()],
        amount: Annotated[str, Form()],
        dedupe_id: Annotated[str, Form()],
    ) -> JSONResponse:
        """Move `amount` from the pot back to its current account; answers the pot."""
        return await move(who, pot_id, destination_account_id, amount, dedupe_id, False)

    @api.post("/payments", status_code=201)
    async def pay(
        who: User,
        source_account_id: Annotated[str, Form()],
        amount: Annotated[str, Form()],
        currency: Annotated[str, Form()],
        recipient: Annotated[str, Form()],
        dedupe_id: Annotated[str, Form()],
        reference: Annotated[str, Form()] = "",
    ) -> JSONResponse:
        """Pay another customer (`recipient`: their email or account id) from your account."""
        value, code = parse_amount(amount), parse_currency(currency)
        to = schemas.parse_text(recipient, "recipient", maximum=320)
        note = schemas.parse_text(reference, "reference", maximum=schemas.MAX_REFERENCE, required=False)
        dedupe = schemas.parse_dedupe_id(dedupe_id)
        fingerprint = request_fingerprint(
            "POST", "/payments",
            {"source_account_id": source_account_id, "amount": value, "currency": code, "recipient": to,
             "reference": note},
        )  # fmt: skip
        async with db.transaction() as session:

            async def perform() -> tuple[int, dict[str, Any]]:
                result = await ledger.pay(
                    session, who.user_id, source_account_id=source_account_id, amount=value, currency=code,
                    recipient=to, reference=note,
                )  # fmt: skip
                return 201, schemas.payment_json(result.payment, result.recipient)

            status, body = await run_once(
                session, owner=f"{who.user_id}/payments", key=dedupe, fingerprint=fingerprint, action=perform
            )
        return JSONResponse(body, status_code=status)

    return api


def _placement(body: schemas.PlaceHold) -> HoldPlacement:
    request = HoldRequest(body.account_id, body.network_txn_id, body.amount, parse_currency(body.currency))
    return HoldPlacement(request, body.expires_at, body.traceparent)


PLACE_ATTEMPTS = 5  # a batch placed again after a concurrent one took its network ids


async def place_holds_at_edge(
    db: Database, ledger: LedgerService, placements: list[HoldPlacement], *, provisional: bool
) -> list[HoldResult | BankError]:
    """A batch of holds in one transaction; placed again, in a new one, if a concurrent batch took
    one of its network ids first (the whole first attempt rolled back: no savepoint on every batch)."""
    for _ in range(PLACE_ATTEMPTS):
        try:
            async with db.fast_transaction() as tx:
                return await ledger.place_holds(tx, placements, provisional=provisional)
        except HoldIdTaken:
            continue
    raise BankError("service_unavailable.holds_contended", "network ids contended; send the batch again")


def internal_router(db: Database, ledger: LedgerService) -> APIRouter:
    """Service-to-service routes for the cards service. Idempotent on the network's transaction id."""
    api = APIRouter(prefix="/internal", tags=["internal"], dependencies=[Depends(require_internal)])

    # The card path: served directly (shared/direct.py), so it parses its own body and answers a
    # JSONResponse (a returned dict would be validated and re-encoded by FastAPI).
    @api.post("/holds/batch", response_model=dict[str, Any], openapi_extra=json_body_doc("PlaceHolds"))
    async def place_holds(request: Request) -> JSONResponse:
        """Provisional holds for a batch of card authorisations, one answer each, in order: `status`
        (active | declined) and `decline_reason`, or `error` (a typed code) for a bad one."""
        body = await read_model(request, schemas.PlaceHolds, max_bytes=schemas.MAX_HOLDS_PER_BATCH * 1024)
        answers = await place_holds_at_edge(db, ledger, [_placement(h) for h in body.holds], provisional=True)
        return JSONResponse({"holds": [schemas.batch_hold_json(a) for a in answers]})

    @api.post("/holds", response_model=dict[str, Any], openapi_extra=json_body_doc("PlaceHold"))
    async def place_hold(request: Request) -> JSONResponse:
        """One hold, placed for good at once (a partial reversal's replacement hold)."""
        body = await read_model(request, schemas.PlaceHold)
        (answer,) = await place_holds_at_edge(db, ledger, [_placement(body)], provisional=False)
        if isinstance(answer, BankError):
            raise answer
        return JSONResponse(schemas.hold_json(answer.hold, answer.account))

    @api.post("/holds/{network_txn_id}/capture")
    async def capture(network_txn_id: str, body: schemas.Capture) -> dict[str, Any]:
        async with db.transaction() as session:
            result = await ledger.capture_hold(
                session, network_txn_id=network_txn_id, amount=body.amount,
                over_capture_tolerance=body.over_capture_tolerance,
            )  # fmt: skip
        return schemas.hold_json(result.hold, result.account)

    @api.post("/holds/{network_txn_id}/release")
    async def release(network_txn_id: str) -> dict[str, Any]:
        async with db.transaction() as session:
            result = await ledger.release_hold(session, network_txn_id=network_txn_id)
        return schemas.hold_json(result.hold, result.account)

    @api.post("/postings")
    async def force_post(body: schemas.ForcePost) -> dict[str, Any]:
        async with db.transaction() as session:
            result = await ledger.force_post(
                session, account_id=body.account_id, network_txn_id=body.network_txn_id,
                amount=body.amount, currency=parse_currency(body.currency), kind=body.kind,
            )  # fmt: skip
        account = result.account
        return {"entry_id": result.entry_id, "balance": account.balance, "available": account.available}

    @api.get("/accounts/{account_id}")
    async def get_account(account_id: str) -> dict[str, Any]:
        async with db.read() as session:
            account = await repo.get_account(session, account_id)
        if account is None or account.kind != "customer":
            raise not_found("account", "no account with that id")
        return {
            "id": account.id, "user_id": account.user_id, "currency": account.currency,
            "closed": account.closed, "balance": account.balance, "available": account.available,
        }  # fmt: skip

    return api
