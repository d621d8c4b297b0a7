"""Card holders' use cases: issue a card, list an account's cards, freeze, unfreeze, cancel, controls.

Ownership of an account is asked of accounts (`GET /internal/accounts/{id}`).
A card remembers the user it was issued to, so freezing a lost card needs
nothing but this service: it works while accounts is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.cards import repository as repo
from services.cards.accounts_client import AccountInfo, AccountsClient, AccountsRefused, AccountsUnavailable
from services.cards.config import CardsSettings
from services.cards.models import Card
from services.cards.vault import Expiry, Vault, new_cvc, new_pan
from shared.db import Database
from shared.errors import BankError, conflict, forbidden, not_found
from shared.ids import new_id

STATUS_AFTER = {"freeze": "frozen", "unfreeze": "active", "cancel": "cancelled"}
ISSUE_ATTEMPTS = 5  # a fresh PAN whose fingerprint is taken is drawn again


@dataclass(frozen=True)
class Issued:
    card: Card
    pan: str | None  # None when an Idempotency-Key replays an earlier issue: shown once only
    cvc: str | None


class CardService:
    def __init__(self, db: Database, vault: Vault, accounts: AccountsClient, settings: CardsSettings) -> None:
        self.db = db
        self.vault = vault
        self.accounts = accounts
        self.settings = settings

    async def owned_account(self, user_id: str, account_id: str) -> AccountInfo:
        try:
            account = await self.accounts.account(account_id)
        except AccountsUnavailable:
            raise BankError(
                "service_unavailable.accounts", "accounts cannot confirm who owns that account; try again"
            ) from None
        except AccountsRefused:
            account = None
        if account is None:
            raise not_found("account", "no account with that id")
        if account.user_id != user_id:
            raise forbidden("insufficient_permissions", "that account does not belong to you")
        return account

    async def issue(self, user_id: str, account_id: str, idempotency_key: str | None = None) -> Issued:
        if idempotency_key and (replay := await self._replay(user_id, account_id, idempotency_key)):
            return replay
        account = await self.owned_account(user_id, account_id)
        if account.closed:
            raise conflict("account_closed", "the account is closed")
        for _ in range(ISSUE_ATTEMPTS):
            now = datetime.now(UTC)
            pan, cvc, card_id = new_pan(self.settings.bin), new_cvc(), new_id("card")
            expiry = Expiry.after(now, self.settings.card_validity_years)
            card = Card(
                id=card_id, account_id=account.id, user_id=user_id, currency=account.currency,
                fingerprint=self.vault.fingerprint(pan), pan_ciphertext=self.vault.encrypt_pan(pan, card_id),
                last4=pan[-4:], expiry_month=expiry.month, expiry_year=expiry.year,
                cvc_digest=self.vault.cvc_digest(card_id, cvc), status="active", per_transaction_limit=None,
                daily_limit=None, blocked_mccs=[], atm_enabled=True, idempotency_key=idempotency_key,
                created=now, updated=now,
            )  # fmt: skip
            async with self.db.transaction() as session:
                added = await repo.add_card(session, card)
            if added:
                return Issued(card, pan, cvc)
            # A concurrent issue with the same key won, or (rarely) the PAN exists: replay or redraw.
            if idempotency_key and (replay := await self._replay(user_id, account_id, idempotency_key)):
                return replay
        raise BankError("internal.pan_space", "could not draw an unused card number; try again")

    async def _replay(self, user_id: str, account_id: str, key: str) -> Issued | None:
        async with self.db.read() as session:
            card = await repo.card_by_idempotency_key(session, user_id, key)
        if card is None:
            return None
        if card.account_id != account_id:
            raise BankError(
                "unprocessable.idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            )
        return Issued(card, None, None)

    async def cards_of(self, user_id: str, account_id: str) -> list[Card]:
        await self.owned_account(user_id, account_id)
        async with self.db.read() as session:
            return await repo.cards_of_account(session, account_id)

    async def change_status(self, user_id: str, card_id: str, action: str) -> Card:
        async with self.db.transaction() as session:
            card = await self._owned_card(session, user_id, card_id)
            if card.status == "cancelled" and action != "cancel":
                raise conflict("card_cancelled", "the card is cancelled; that is final")
            card.status = STATUS_AFTER[action]
            card.updated = datetime.now(UTC)
        return card

    async def update_controls(self, user_id: str, card_id: str, changes: dict[str, Any]) -> Card:
        async with self.db.transaction() as session:
            card = await self._owned_card(session, user_id, card_id)
            if card.status == "cancelled":
                raise conflict("card_cancelled", "the card is cancelled; that is final")
            for name, value in changes.items():
                setattr(card, name, value)
            card.updated = datetime.now(UTC)
        return card

    async def _owned_card(self, session: AsyncSession, user_id: str, card_id: str) -> Card:
        card = await repo.get_card(session, card_id, lock=True)
        if card is None:
            raise not_found("card", "no card with that id")
        if card.user_id != user_id:
            raise forbidden("insufficient_permissions", "that card does not belong to you")
        return card
