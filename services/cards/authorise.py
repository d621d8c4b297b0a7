"""Authorisations (0100): the card network's synchronous money path, in batches (decision 0030).

Whatever arrives while a batch is in flight forms the next one (shared/batching.py). A batch is one
database transaction around one call to accounts: lock the batch's cards and read any answers already
recorded under its network ids, decide each message (pure), place all the holds in one call, then
write every authorisation and its event with set-based statements, and commit. A repeat of a message
replays the stored answer; a different message under a used id gets 94.

Accounts places the holds provisionally. It keeps a hold only once it has seen an approved
authorisation recorded here behind it, and releases it otherwise (decision 0031). So a crash
anywhere in a batch, or a 91 because accounts was late, strands nobody's money.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import string
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.cards import repository as repo
from services.cards.accounts_client import (
    AccountsClient,
    AccountsRefused,
    AccountsUnavailable,
    HoldAnswer,
    HoldAsk,
)
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
from services.cards.models import Authorisation, Card
from services.cards.network import (
    RESPONSE_CODES,
    AdviceRequest,
    AuthorisationRequest,
    ResponseCode,
)
from services.cards.observability import (
    AUTHORISATIONS,
    BATCH_SIZE,
    ISSUER_UNAVAILABLE,
    SHED,
    Stopwatch,
    Throttled,
    queued,
)
from services.cards.schemas import controls_of, expiry_of
from services.cards.vault import Expiry, Vault
from shared import tracing
from shared.batching import NaturalBatcher
from shared.context import TraceContext, current_traceparent, remaining_seconds
from shared.db import Database, Executor, Tx
from shared.errors import BankError
from shared.events.outbox import Outbox, Outgoing
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


def answer_to_repeat(existing: Authorisation, digest: str) -> dict[str, Any]:
    """The answer recorded under the message's network id, if it is the same message (or the id was
    closed unrecorded: its 91); else 94."""
    if existing.request_digest in (digest, repo.VOIDED):
        return existing.response
    return duplicate(existing.network_transaction_id)


def card_state(card: Card | None) -> CardState | None:
    if card is None:
        return None
    return CardState(card.status, expiry_of(card), card.currency, controls_of(card))


def event_fields(auth: Authorisation, card: Card) -> dict[str, Any]:
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


def decision_event(auth: Authorisation, card: Card) -> AuthorisationApproved | AuthorisationDeclined:
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


async def emit_decision(outbox: Outbox, session: Executor, auth: Authorisation, card: Card) -> None:
    """The decision's event, in the caller's transaction."""
    await outbox.emit(session, AUTHORISATIONS_TOPIC, card.account_id, decision_event(auth, card))


@dataclass(frozen=True, slots=True)
class Message:
    """An authorisation waiting for its batch."""

    request: AuthorisationRequest
    fingerprint: str
    digest: str
    traceparent: str | None  # its request's trace, which its event continues
    queued_at: float  # monotonic
    deadline: float  # monotonic: past it, the network has stopped waiting for the answer


@dataclass(slots=True)
class Decided:
    """A message of a batch on its way through it."""

    message: Message
    card: Card | None
    decision: Decision
    expires_at: datetime | None = None  # of the hold, when one is asked for
    balance: int | None = None  # for a balance inquiry


class Authoriser:
    def __init__(
        self, db: Database, outbox: Outbox, vault: Vault, accounts: AccountsClient, settings: CardsSettings
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.vault = vault
        self.accounts = accounts
        self.settings = settings
        self.batcher = NaturalBatcher(
            self._authorise_batch,
            max_size=settings.authorisation_batch_max,
            budget=settings.authorisation_batch_budget_ms / 1000,
            overload_wait=settings.authorisation_overload_wait_ms / 1000,
            shed=lambda _message: _shed(OVERLOADED),
        )
        self._unavailable = Throttled(log)
        # Messages being decided in this process, by network id: a repeat that arrives meanwhile (the
        # network's 0101, another link) waits for the original's answer instead of racing it.
        self._deciding: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}

    async def authorise(self, msg: AuthorisationRequest) -> dict[str, Any]:
        fingerprint = self.vault.fingerprint(msg.pan)
        digest = request_digest(msg, fingerprint)
        nid = msg.network_transaction_id
        if (original := self._deciding.get(nid)) is not None:
            answer = await asyncio.shield(original[1])
            answer = dict(answer) if original[0] == digest else duplicate(nid)
        else:
            answer = await self._decide_first(nid, Message(msg, fingerprint, digest, *self._timing()))
        AUTHORISATIONS.labels(answer["response_code"]).inc()
        return answer

    def _timing(self) -> tuple[str | None, float, float]:
        """A message's traceparent, when it queued and the deadline of its wait for a batch."""
        wait = self.settings.authorisation_queue_seconds
        if (budget := remaining_seconds()) is not None:
            wait = min(wait, budget)
        now = time.monotonic()
        return current_traceparent(), now, now + wait

    async def _decide_first(self, nid: str, message: Message) -> dict[str, Any]:
        answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        answered.add_done_callback(lambda f: f.cancelled() or f.exception())  # no repeat may ask
        self._deciding[nid] = (message.digest, answered)
        try:
            answer = await self.batcher.submit(message)
        except BaseException as exc:  # shed, or its caller gone: a repeat waiting on it is refused too
            answered.set_exception(exc if isinstance(exc, Exception) else _shed(WAITED))
            raise
        finally:
            del self._deciding[nid]
        answered.set_result(answer)
        return dict(answer)

    async def _authorise_batch(self, messages: list[Message]) -> list[dict[str, Any] | Exception]:
        """One batch, traced under its first message's request (each event continues its own)."""
        span = tracing.start(
            "authorise.batch", parent=TraceContext.parse(messages[0].traceparent),
            attributes={"bank.batch_size": len(messages)},
        )  # fmt: skip
        try:
            return await self._decide_batch(messages)
        finally:
            if span is not None:
                span.end()

    async def _decide_batch(self, messages: list[Message]) -> list[dict[str, Any] | Exception]:
        BATCH_SIZE.observe(len(messages))
        answers: list[dict[str, Any] | Exception | None] = [None] * len(messages)
        now_monotonic = time.monotonic()
        first: dict[str, int] = {}  # network id -> the index of its first message in this batch
        for i, message in enumerate(messages):
            queued(now_monotonic - message.queued_at)
            if message.deadline <= now_monotonic:
                answers[i] = _shed(WAITED)
            else:
                first.setdefault(message.request.network_transaction_id, i)
        leaders = [messages[i] for i in sorted(first.values())]
        recorded: dict[str, Authorisation] = {}
        prior: dict[str, Authorisation] = {}
        if leaders:
            async with self.db.fast_transaction() as tx:
                recorded = await self._decide_and_record(tx, leaders, answers, first)
        taken = [m.request.network_transaction_id for i, m in enumerate(messages) if answers[i] is None
                 and m.request.network_transaction_id not in recorded]  # fmt: skip
        if taken:  # a concurrent repeat, or an id closed by the hold resolution: answer as recorded
            async with self.db.fast_transaction() as tx:
                prior = await repo.prior_answers(tx, taken)
        for i, message in enumerate(messages):
            if answers[i] is None:
                nid = message.request.network_transaction_id
                existing = recorded.get(nid) or prior.get(nid)
                answers[i] = answer_to_repeat(existing, message.digest) if existing else _shed(WAITED)
        return [answer for answer in answers if answer is not None]

    async def _decide_and_record(
        self, tx: Tx, leaders: list[Message], answers: list[dict[str, Any] | Exception | None],
        first: dict[str, int],
    ) -> dict[str, Authorisation]:  # fmt: skip
        """Decide the batch's new messages and record them; answer each in `answers`. Returns the
        authorisations recorded by this batch, by network id."""
        watch = Stopwatch()
        cards = await repo.cards_for_messages(tx, (m.fingerprint for m in leaders))
        prior = await repo.prior_answers(tx, (m.request.network_transaction_id for m in leaders))
        watch.lap("lookup")
        fresh: list[Message] = []
        for message in leaders:
            if (existing := prior.get(message.request.network_transaction_id)) is not None:
                answers[first[message.request.network_transaction_id]] = answer_to_repeat(
                    existing, message.digest
                )
            else:
                fresh.append(message)
        now = datetime.now(UTC)
        decided = await self._decide(tx, fresh, cards, now)
        watch.lap("decision")
        await self._place_holds(decided, now)
        await self._balances(decided)
        watch.lap("accounts")
        auths = [self._record(d, now) for d in decided]
        inserted = await repo.insert_authorisations(tx, auths)
        events = [
            Outgoing(
                AUTHORISATIONS_TOPIC,
                d.card.account_id,
                decision_event(auth, d.card),
                traceparent=d.message.traceparent,
            )
            for d, auth in zip(decided, auths, strict=True)
            if d.card is not None and auth.network_transaction_id in inserted
        ]
        await self.outbox.emit_many(tx, events)
        recorded = {a.network_transaction_id: a for a in auths if a.network_transaction_id in inserted}
        watch.lap("record")  # the commit follows at the edge
        for auth in recorded.values():
            answers[first[auth.network_transaction_id]] = auth.response
        return recorded

    async def _decide(
        self, tx: Tx, messages: list[Message], cards: dict[str, Card], now: datetime
    ) -> list[Decided]:
        """Each message's decision by the card's own rules (pure), its daily total counting the
        approvals asked for earlier in this batch on the same card."""
        attempts = []
        for message in messages:
            msg, card = message.request, cards.get(message.fingerprint)
            cvc_ok = None
            if card is not None and msg.cvc is not None:
                cvc_ok = self.vault.cvc_matches(card.id, msg.cvc, card.cvc_digest)
            attempt = Attempt(
                msg.transaction,
                msg.amount,
                msg.currency,
                msg.merchant.mcc,
                Expiry.from_yymm(msg.expiry),
                cvc_ok,
            )
            attempts.append((message, card, card_state(card), attempt))
        limited = [
            card.id for _, card, state, attempt in attempts if card and needs_daily_total(state, attempt)
        ]
        spent = await repo.spent_since(tx, limited, spend_day_start(now)) if limited else {}
        decided = []
        for message, card, state, attempt in attempts:
            decision = decide(state, attempt, now=now, spent_today=spent.get(card.id, 0) if card else 0)
            if card is not None and decision.action is Action.HOLD and card.id in spent:
                spent[card.id] += message.request.amount
            decided.append(Decided(message, card, decision))
        return decided

    async def _place_holds(self, decided: list[Decided], now: datetime) -> None:
        """The batch's one call to accounts; a 91 for all of it if accounts is down or late (any hold
        it placed meanwhile is released, as no approval stands behind it: decision 0031)."""
        wanted = [d for d in decided if d.card is not None and d.decision.action is Action.HOLD]
        if not wanted:
            return
        s = self.settings
        for d in wanted:
            d.expires_at = hold_expires_at(
                d.message.request.merchant.mcc, now, days=s.hold_days, long_days=s.long_hold_days
            )
        asks = [
            HoldAsk(d.card.account_id, d.message.request.network_transaction_id, d.message.request.amount,
                    d.message.request.currency, d.expires_at, d.message.traceparent)
            for d in wanted if d.card is not None and d.expires_at is not None
        ]  # fmt: skip
        held: list[HoldAnswer | AccountsRefused | None]
        try:
            held = list(await self.accounts.place_holds(asks))
        except AccountsUnavailable as exc:
            ISSUER_UNAVAILABLE.labels(exc.cause).inc()
            self._unavailable.warning("accounts unavailable: answering 91", batch=len(asks), error=str(exc))
            held = [None] * len(asks)
        except AccountsRefused as exc:
            log.warning("accounts refused a batch of holds", extra=log_fields(code=exc.code, batch=len(asks)))
            held = [exc] * len(asks)
        for d, answer in zip(wanted, held, strict=True):
            if answer is None:
                d.decision, d.expires_at = Decision(Outcome.ISSUER_UNAVAILABLE), None
            elif isinstance(answer, AccountsRefused):
                d.decision, d.expires_at = Decision(Outcome.ACCOUNT_REFUSED), None
            else:
                d.decision = after_hold(answer.status, answer.decline_reason)
                if not d.decision.approved:
                    d.expires_at = None

    async def _balances(self, decided: list[Decided]) -> None:
        """Balance inquiries: the available balance, asked for all of them at once."""
        inquiries = [d for d in decided if d.card is not None and d.decision.action is Action.BALANCE]
        if not inquiries:
            return
        found = await asyncio.gather(
            *(self.accounts.account(d.card.account_id, hot=True) for d in inquiries if d.card is not None),
            return_exceptions=True,
        )
        for d, account in zip(inquiries, found, strict=True):
            if isinstance(account, AccountsUnavailable):
                ISSUER_UNAVAILABLE.labels(account.cause).inc()
                d.decision = Decision(Outcome.ISSUER_UNAVAILABLE)
            elif isinstance(account, BaseException) or account is None:
                d.decision = Decision(Outcome.ACCOUNT_REFUSED)
            else:
                d.balance = account.available

    def _record(self, d: Decided, now: datetime) -> Authorisation:
        card, msg, decision = d.card, d.message.request, d.decision
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
        if d.balance is not None and card is not None:
            response["available_balance"], response["currency"] = d.balance, card.currency
        reason = decision.decline_reason
        held = d.expires_at is not None
        return Authorisation(
            id=auth_id, network_transaction_id=msg.network_transaction_id, kind="authorisation",
            card_id=card.id if card else None, account_id=card.account_id if card else None,
            processing_code=msg.processing_code, amount=msg.amount, currency=msg.currency,
            status="approved" if decision.approved else "declined", response_code=code.value,
            approval_code=approval, decline_reason=reason.value if reason else None,
            decline_detail=None if decision.approved else decision.outcome.value,
            hold_id=msg.network_transaction_id if held else None, held_amount=msg.amount if held else 0,
            posted_amount=0, reversed_amount=0, settled_amount=0, stand_in=False,
            merchant=msg.merchant.model_dump(mode="json"), stan=msg.stan, rrn=msg.rrn,
            transmission_time=msg.transmission_time, request_digest=d.message.digest, response=response,
            advice_response=None, expires_at=d.expires_at, created=now, updated=now,
        )  # fmt: skip

    async def aclose(self) -> None:
        await self.batcher.aclose()


OVERLOADED = "overloaded"  # refused while a queue stands: it would be answered too late (decision 0036)
WAITED = "queue_timeout"  # waited for a batch past CARDS_AUTHORISATION_QUEUE_SECONDS or its deadline


def _shed(reason: str) -> BankError:
    """Refused without a decision: nothing decided, nothing recorded, so the network's repeat is
    decided afresh. A retryable refusal rather than a 91, which would send the payment to the
    network's stand-in, approving it without our balance (decision 0036)."""
    SHED.labels(reason).inc()
    return BankError(
        f"rate_limited.{reason}",
        "too many authorisations at once: not decided, send it again",
        headers={"Retry-After": "1"},
    )
