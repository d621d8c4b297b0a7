"""Clearing: first presentments settle card transactions, each idempotent on its presentment id.

Per presentment, one transaction (the authorisation row locked while accounts is called):

* refund (processing code 20): credit the account;
* an authorisation with a live hold: capture it for the presented amount, allowing the
  over-capture tolerance (20% for restaurants, bars, fast food and taxis, 15% otherwise). Above
  the tolerance the scheme has still taken the money from us, so the customer is charged too:
  the hold is captured for what it held and the excess force-posted, flagged
  `exceeds_tolerance` (a chargeback candidate);
* a stand-in approval (advice) already posted: post only the difference;
* anything else (offline, no authorisation, its hold expired or released): force-post.

Every accounts call is idempotent (holds by network id, postings by `presentment:<id>`), so a
presentment interrupted by an accounts failure answers `retry`, records nothing, and is simply
sent again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.cards import repository as repo
from services.cards.accounts_client import AccountsClient, AccountsRefused, AccountsUnavailable
from services.cards.config import CardsSettings
from services.cards.decision import TransactionType, over_capture_tolerance
from services.cards.events import AUTHORISATIONS_TOPIC, MerchantData, RefundSettled, TransactionSettled
from services.cards.models import Authorisation, Card
from services.cards.models import Presentment as PresentmentRow
from services.cards.network import Presentment, PresentmentResult, PresentmentStatus
from services.cards.vault import Vault
from shared.db import Database
from shared.events.outbox import Outbox
from shared.observability import log_fields

log = logging.getLogger("services.cards.clearing")


class Clearing:
    def __init__(
        self, db: Database, outbox: Outbox, vault: Vault, accounts: AccountsClient, settings: CardsSettings
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.vault = vault
        self.accounts = accounts
        self.settings = settings

    async def present_all(self, presentments: list[Presentment]) -> list[dict[str, Any]]:
        return [await self.present(p) for p in presentments]

    async def present(self, p: Presentment) -> dict[str, Any]:
        try:
            async with self.db.transaction() as session:
                done = await repo.presentment(session, p.presentment_id)
                if done is not None:
                    return done.result
                return await self._settle(session, p)
        except AccountsUnavailable as exc:
            log.warning("presentment not settled: accounts unavailable",
                        extra=log_fields(presentment_id=p.presentment_id, error=str(exc)))  # fmt: skip
            return _result(p, PresentmentStatus.RETRY, "issuer_unavailable")

    async def _settle(self, session: AsyncSession, p: Presentment) -> dict[str, Any]:
        auth = None
        if p.network_transaction_id:
            auth = await repo.authorisation_by_network_id(session, p.network_transaction_id, lock=True)
        fingerprint = self.vault.fingerprint(p.pan)
        card = await repo.card_by_fingerprint(session, fingerprint)
        if card is not None and auth is not None and auth.card_id != card.id:
            auth = None  # the id names another card's authorisation: settle this card's offline
        if card is None:
            return await self._record(session, p, None, None, PresentmentStatus.REJECTED, "unknown_card")
        if p.currency != card.currency:
            return await self._record(
                session, p, card, auth, PresentmentStatus.REJECTED, "currency_not_supported"
            )
        try:
            if p.transaction is TransactionType.REFUND:
                await self.accounts.post(card.account_id, f"presentment:{p.presentment_id}", p.amount,
                                         p.currency, "credit")  # fmt: skip
                outcome, exceeds = "refunded", False
            else:
                outcome, exceeds = await self._debit(card, auth, p)
        except AccountsRefused as exc:
            log.warning("accounts refused a presentment",
                        extra=log_fields(presentment_id=p.presentment_id, code=exc.code))  # fmt: skip
            return await self._record(session, p, card, auth, PresentmentStatus.REJECTED, exc.code)
        if auth is not None and outcome != "refunded":
            auth.status, auth.hold_id, auth.held_amount = "settled", None, 0
            auth.settled_amount += p.amount
            auth.updated = datetime.now(UTC)
        result = await self._record(session, p, card, auth, PresentmentStatus.SETTLED, outcome, exceeds)
        await self._emit(session, p, card, auth, outcome, exceeds)
        return result

    async def _debit(self, card: Card, auth: Authorisation | None, p: Presentment) -> tuple[str, bool]:
        reference = f"presentment:{p.presentment_id}"
        live = auth is not None and auth.status == "approved"
        if live and auth is not None and auth.hold_id and auth.held_amount > 0:
            held = auth.held_amount
            s = self.settings
            tolerance = over_capture_tolerance(
                held, p.merchant.mcc, percent=s.over_capture_percent,
                hospitality_percent=s.hospitality_over_capture_percent, hospitality_mccs=s.hospitality_mccs,
            )  # fmt: skip
            within = p.amount <= held + tolerance
            captured = await self.accounts.capture(auth.hold_id, p.amount if within else held, tolerance)
            if captured == "captured":
                if not within:
                    await self.accounts.post(card.account_id, reference, p.amount - held, p.currency, "debit")
                return "captured", not within
        elif live and auth is not None and auth.posted_amount > 0:
            difference = p.amount - auth.posted_amount
            if difference:
                kind = "debit" if difference > 0 else "credit"
                await self.accounts.post(card.account_id, reference, abs(difference), p.currency, kind)
            return "adjusted", False
        await self.accounts.post(card.account_id, reference, p.amount, p.currency, "debit")
        return "force_posted", False

    async def _record(
        self,
        session: AsyncSession,
        p: Presentment,
        card: Card | None,
        auth: Authorisation | None,
        status: PresentmentStatus,
        outcome: str,
        exceeds: bool = False,
    ) -> dict[str, Any]:
        result = _result(p, status, outcome, auth, exceeds)
        session.add(
            PresentmentRow(
                id=p.presentment_id, network_transaction_id=p.network_transaction_id,
                authorisation_id=auth.id if auth else None, card_id=card.id if card else None,
                account_id=card.account_id if card else None, processing_code=p.processing_code,
                amount=p.amount, currency=p.currency, status=status.value, outcome=outcome, result=result,
                created=datetime.now(UTC),
            )
        )  # fmt: skip
        return result

    async def _emit(
        self, session: AsyncSession, p: Presentment, card: Card, auth: Authorisation | None, outcome: str,
        exceeds: bool,
    ) -> None:  # fmt: skip
        fields: dict[str, Any] = {
            "account_id": card.account_id, "card_id": card.id, "card_last4": card.last4, "amount": p.amount,
            "currency": p.currency, "merchant": MerchantData.model_validate(p.merchant.model_dump()),
            "network_transaction_id": p.network_transaction_id, "processing_code": p.processing_code,
            "presentment_id": p.presentment_id, "authorisation_id": auth.id if auth else None,
        }  # fmt: skip
        if outcome == "refunded":
            event: RefundSettled | TransactionSettled = RefundSettled(**fields)
        else:
            authorised = auth.amount - auth.reversed_amount if auth is not None else None
            event = TransactionSettled(
                **fields,
                authorised_amount=authorised,
                forced=outcome == "force_posted",
                exceeds_tolerance=exceeds,
            )
        await self.outbox.emit(session, AUTHORISATIONS_TOPIC, card.account_id, event)


def _result(
    p: Presentment,
    status: PresentmentStatus,
    outcome: str,
    auth: Authorisation | None = None,
    exceeds: bool = False,
) -> dict[str, Any]:
    return PresentmentResult(
        presentment_id=p.presentment_id, status=status, outcome=outcome, amount=p.amount,
        currency=p.currency, authorisation_id=auth.id if auth else None, exceeds_tolerance=exceeds,
    ).model_dump(mode="json")  # fmt: skip
