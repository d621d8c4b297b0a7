"""Authorisations (0100): the card network's synchronous money path.

An authorisation is one database transaction around one call to accounts:
lock the card row and find any earlier answer under the same network id (one
query), decide (pure), place the hold, then write the authorisation, its
answer and its event, and commit. A repeat of the message replays the stored
answer; a different message under a used id gets 94. If accounts does not
answer within the deadline we answer 91 and, in the same transaction, record a
compensation: the job in compensation.py releases any hold the late request
may still have placed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import string
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.cards import repository as repo
from services.cards.accounts_client import AccountsClient, AccountsRefused, AccountsUnavailable
from services.cards.config import CardsSettings
from services.cards.decision import (
    Action,
    Attempt,
    CardState,
    Decision,
    DeclineReason,
    Outcome,
    after_hold,
    decide,
    hold_expires_at,
    needs_daily_total,
    spend_day_start,
)
from services.cards.events import (
    AUTHORISATIONS_TOPIC,
    AuthorisationApproved,
    AuthorisationDeclined,
    MerchantData,
)
from services.cards.models import Authorisation, Card, CardRow, PriorAnswer
from services.cards.network import (
    RESPONSE_CODES,
    AdviceRequest,
    AuthorisationRequest,
    ResponseCode,
)
from services.cards.observability import AUTHORISATIONS, ISSUER_UNAVAILABLE, SHED, Stopwatch, Throttled
from services.cards.schemas import controls_of, expiry_of
from services.cards.vault import Expiry, Vault
from shared.context import remaining_seconds
from shared.db import Database, Executor, Tx
from shared.errors import BankError
from shared.events.outbox import Outbox
from shared.ids import new_id
from shared.observability import log_fields

log = logging.getLogger("services.cards.authorise")

_APPROVAL_ALPHABET = string.ascii_uppercase + string.digits


def approval_code() -> str:
    return "".join(secrets.choice(_APPROVAL_ALPHABET) for _ in range(6))


def request_digest(msg: AuthorisationRequest | AdviceRequest, fingerprint: str) -> str:
    """What makes two messages under one network id the same message. No CVC: with the
    fingerprint stored beside it, a digest over the CVC would give its 1,000 values away."""
    parts = (fingerprint, msg.expiry, msg.processing_code, str(msg.amount), msg.currency,
             msg.merchant.id, msg.merchant.mcc)  # fmt: skip
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def duplicate(network_transaction_id: str) -> dict[str, Any]:
    return {"mti": "0110", "response_code": ResponseCode.DUPLICATE.value,
            "network_transaction_id": network_transaction_id}  # fmt: skip


def answer_to_repeat(existing: Authorisation | PriorAnswer, digest: str) -> dict[str, Any]:
    return (
        existing.response if existing.request_digest == digest else duplicate(existing.network_transaction_id)
    )


def card_state(card: CardRow | None) -> CardState | None:
    if card is None:
        return None
    return CardState(card.status, expiry_of(card), card.currency, controls_of(card))


def event_fields(auth: Authorisation, card: Card | CardRow) -> dict[str, Any]:
    return {
        "account_id": card.account_id,
        "card_id": card.id,
        "card_last4": card.last4,
        "amount": auth.amount,
        "currency": auth.currency,
        "merchant": MerchantData.model_validate(auth.merchant),
        "network_transaction_id": auth.network_transaction_id,
        "processing_code": auth.processing_code,
        "authorisation_id": auth.id,
        "stan": auth.stan,
        "rrn": auth.rrn,
        "response_code": auth.response_code,
    }


def decision_event(
    auth: Authorisation, card: Card | CardRow
) -> AuthorisationApproved | AuthorisationDeclined:
    """card.authorisation.approved or .declined."""
    fields = event_fields(auth, card)
    if auth.status == "approved":
        return AuthorisationApproved(
            **fields, approval_code=auth.approval_code, held_amount=auth.held_amount, stand_in=auth.stand_in
        )
    return AuthorisationDeclined(
        **fields,
        decline_reason=auth.decline_reason or DeclineReason.OTHER.value,
        decline_detail=auth.decline_detail or "",
    )


async def emit_decision(outbox: Outbox, session: Executor, auth: Authorisation, card: Card | CardRow) -> None:
    """The decision's event, in the caller's transaction."""
    await outbox.emit(session, AUTHORISATIONS_TOPIC, card.account_id, decision_event(auth, card))


class Authoriser:
    def __init__(
        self, db: Database, outbox: Outbox, vault: Vault, accounts: AccountsClient, settings: CardsSettings
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.vault = vault
        self.accounts = accounts
        self.settings = settings
        self._releases: set[asyncio.Task[None]] = set()
        # Fewer authorisations interleaved on one event loop finish sooner each, so the accounts
        # deadline measures accounts rather than our own queue (decision 0009).
        self._admission = asyncio.Semaphore(settings.authorisation_concurrency)
        self._unavailable = Throttled(log)

    async def authorise(self, msg: AuthorisationRequest) -> dict[str, Any]:
        watch = Stopwatch()
        await self._admit()
        try:
            watch.lap("admission")
            answer = await self._authorise(msg, watch)
        finally:
            self._admission.release()
        AUTHORISATIONS.labels(answer["response_code"]).inc()
        return answer

    async def _admit(self) -> None:
        """Wait for a turn, but not past the point where the network has stopped waiting for us: an
        answer it no longer reads would cost as much as one it does. Unanswered is not recorded, so
        a repeat is decided afresh (nothing was decided the first time)."""
        wait = self.settings.authorisation_queue_seconds
        if (budget := remaining_seconds()) is not None:
            wait = min(wait, budget)
        try:
            async with asyncio.timeout(wait):
                await self._admission.acquire()
        except TimeoutError:
            SHED.inc()
            raise BankError(
                "rate_limited.authorisations",
                "too many authorisations at once: not answered, send it again",
                headers={"Retry-After": "1"},
            ) from None

    async def _authorise(self, msg: AuthorisationRequest, watch: Stopwatch) -> dict[str, Any]:
        nid = msg.network_transaction_id
        fingerprint = self.vault.fingerprint(msg.pan)
        digest = request_digest(msg, fingerprint)
        placed = False
        try:
            async with self.db.fast_transaction() as tx:
                card, existing = await repo.card_for_message(tx, fingerprint, nid)
                if card is None:
                    existing = await repo.prior_answer(tx, nid)
                if existing is not None:
                    return answer_to_repeat(existing, digest)
                watch.lap("lookup")
                now = datetime.now(UTC)
                decision, expires_at, balance = await self._decide(tx, card, msg, now, watch)
                placed = decision.approved and expires_at is not None
                auth = self._record(card, msg, decision, digest, now, expires_at, balance)
                if card is None:  # an unknown card: no account to tell
                    await repo.insert_authorisation(tx, auth)
                else:
                    event = self.outbox.stage(
                        AUTHORISATIONS_TOPIC, card.account_id, decision_event(auth, card)
                    )
                    await repo.insert_authorisation(tx, auth, event)
                    self.outbox.written(tx, event)
            watch.lap("record")
            return auth.response
        except asyncpg.UniqueViolationError:
            # A concurrent message under the same network id committed first: answer as it did.
            async with self.db.fast_transaction() as tx:
                existing = await repo.prior_answer(tx, nid)
            if existing is None:
                raise
            return answer_to_repeat(existing, digest)
        except BaseException:
            if placed:  # the hold exists but our record of it does not: give the money back
                self._release_soon(nid)
            raise

    async def _decide(
        self,
        tx: Tx,
        card: CardRow | None,
        msg: AuthorisationRequest,
        now: datetime,
        watch: Stopwatch,
    ) -> tuple[Decision, datetime | None, int | None]:
        """The decision, the hold's expiry when one was placed, the balance for an inquiry."""
        state = card_state(card)
        cvc_ok = None
        if card is not None and msg.cvc is not None:
            cvc_ok = self.vault.cvc_matches(card.id, msg.cvc, card.cvc_digest)
        attempt = Attempt(
            msg.transaction, msg.amount, msg.currency, msg.merchant.mcc, Expiry.from_yymm(msg.expiry), cvc_ok
        )
        spent = 0
        if card is not None and needs_daily_total(state, attempt):
            spent = await repo.spent_since(tx, card.id, spend_day_start(now))
        decision = decide(state, attempt, now=now, spent_today=spent)
        watch.lap("decision")
        if card is None or decision.action is Action.NONE:
            return decision, None, None
        try:
            return await self._ask_accounts(tx, card, msg, decision, now)
        finally:
            watch.lap("accounts")

    async def _ask_accounts(
        self, tx: Tx, card: CardRow, msg: AuthorisationRequest, decision: Decision, now: datetime
    ) -> tuple[Decision, datetime | None, int | None]:
        """The one call: place the hold (or read the balance for an inquiry)."""
        nid = msg.network_transaction_id
        try:
            if decision.action is Action.BALANCE:
                account = await self.accounts.account(card.account_id, hot=True)
                if account is None:
                    return Decision(Outcome.ACCOUNT_REFUSED), None, None
                return decision, None, account.available
            s = self.settings
            expires_at = hold_expires_at(msg.merchant.mcc, now, days=s.hold_days, long_days=s.long_hold_days)
            answer = await self.accounts.place_hold(
                card.account_id, nid, msg.amount, msg.currency, expires_at, hot=True
            )
        except AccountsUnavailable as exc:
            ISSUER_UNAVAILABLE.labels(exc.cause).inc()
            if exc.maybe_applied:
                await repo.add_compensation(tx, nid, Outcome.ISSUER_UNAVAILABLE.value)
            self._unavailable.warning(
                "accounts unavailable: answering 91",
                network_transaction_id=nid, error=str(exc), compensation=exc.maybe_applied,
            )  # fmt: skip
            return Decision(Outcome.ISSUER_UNAVAILABLE), None, None
        except AccountsRefused as exc:
            log.warning(
                "accounts refused a hold", extra=log_fields(network_transaction_id=nid, code=exc.code)
            )
            return Decision(Outcome.ACCOUNT_REFUSED), None, None
        held = after_hold(answer.status, answer.decline_reason)
        return held, (expires_at if held.approved else None), None

    def _record(
        self,
        card: CardRow | None,
        msg: AuthorisationRequest,
        decision: Decision,
        digest: str,
        now: datetime,
        expires_at: datetime | None,
        balance: int | None,
    ) -> Authorisation:
        auth_id = new_id("auth")
        code = RESPONSE_CODES[decision.outcome]
        approval = approval_code() if decision.approved else None
        response: dict[str, Any] = {
            "mti": "0110",
            "response_code": code.value,
            "network_transaction_id": msg.network_transaction_id,
            "authorisation_id": auth_id,
        }
        if approval:
            response["approval_code"] = approval
        if balance is not None and card is not None:
            response["available_balance"], response["currency"] = balance, card.currency
        reason = decision.decline_reason
        auth = Authorisation(
            id=auth_id, network_transaction_id=msg.network_transaction_id, kind="authorisation",
            card_id=card.id if card else None, account_id=card.account_id if card else None,
            processing_code=msg.processing_code, amount=msg.amount, currency=msg.currency,
            status="approved" if decision.approved else "declined", response_code=code.value,
            approval_code=approval, decline_reason=reason.value if reason else None,
            decline_detail=None if decision.approved else decision.outcome.value,
            hold_id=msg.network_transaction_id if expires_at else None,
            held_amount=msg.amount if expires_at else 0, posted_amount=0, reversed_amount=0, settled_amount=0,
            stand_in=False, merchant=msg.merchant.model_dump(mode="json"), stan=msg.stan, rrn=msg.rrn,
            transmission_time=msg.transmission_time, request_digest=digest, response=response,
            expires_at=expires_at, created=now, updated=now,
        )  # fmt: skip
        return auth

    def _release_soon(self, hold_id: str) -> None:
        async def release() -> None:
            try:
                await self.accounts.release_hold(hold_id)
            except Exception as exc:  # the hold expires, or the network's timeout reversal releases it
                log.warning(
                    "could not release an unrecorded hold",
                    extra=log_fields(network_transaction_id=hold_id, error=str(exc)),
                )

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
