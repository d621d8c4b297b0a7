"""Accounts' use cases: open accounts, top up, and the card money path (holds, captures, postings).

Every method receives the caller's transaction and adds its postings, hold
changes and outbox events to it; the api layer commits once. Any change to a
customer's money starts by row-locking that account, which is what makes 100
concurrent authorisations against a balance for 10 approve exactly 10.

Internal accounts (card scheme settlement, top-up funding, fees) keep no
running balance on their row: every capture would otherwise queue on that one
hot row. Their balance is the sum of their postings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.accounts import repository as repo
from services.accounts.config import AccountsSettings
from services.accounts.events import (
    ACCOUNTS_TOPIC,
    LEDGER_TOPIC,
    AccountCreated,
    AccountPosted,
    HoldCaptured,
    HoldExpired,
    HoldPlaced,
    HoldReleased,
    PaymentReceived,
    PaymentSent,
    PotCreated,
    PotDeleted,
    PotDeposited,
    PotWithdrawn,
    TopupCompleted,
)
from services.accounts.ledger import (
    CARD_SCHEME,
    P2P_PAYMENT,
    POT_DEPOSIT,
    POT_WITHDRAWAL,
    TOPUP_FUNDING,
    Funds,
    HoldDecision,
    HoldRequest,
    Line,
    capture_allowed,
    check_balanced,
    daily_limit_refusal,
    decide_holds,
    move_refusal,
    spend_day_start,
    transfer,
)
from services.accounts.models import Account, Hold, Payment, Pot, User
from services.accounts.observability import NEGATIVE_BALANCES
from shared.db import Executor
from shared.errors import BankError, bad_request, conflict, forbidden, not_found
from shared.events.outbox import Outbox, Outgoing
from shared.ids import new_id, plausible_id
from shared.money import parse_currency


class HoldIdTaken(Exception):
    """A hold's network id was taken by a concurrent batch that committed first: the caller rolls
    this batch's transaction back and places the batch again, that id now a repeat."""


@dataclass(frozen=True, slots=True)
class Money:
    """An account's money at a moment (after a hold was decided)."""

    balance: int
    available: int


@dataclass(frozen=True)
class HoldResult:
    hold: Hold
    account: Account | Money


@dataclass(frozen=True, slots=True)
class HoldPlacement:
    request: HoldRequest
    expires_at: datetime | None = None
    traceparent: str | None = None  # the authorisation's trace, which the hold's event continues


def _repeat(hold: Hold, request: HoldRequest, account: Funds | Money | Account) -> HoldResult | BankError:
    """The answer to a placement whose network id already has a hold: that hold, if it is the same."""
    if hold.account_id != request.account_id or hold.amount != request.amount:
        return conflict("network_txn_id_reused", "that network transaction id was used for another hold")
    return HoldResult(hold, Money(account.balance, account.available))


@dataclass(frozen=True)
class PostingResult:
    entry_id: str
    account: Account


class LedgerService:
    def __init__(self, outbox: Outbox, settings: AccountsSettings) -> None:
        self.outbox = outbox
        self.settings = settings

    # Accounts ---------------------------------------------------------------------------------

    async def open_account(
        self, session: AsyncSession, user_id: str, description: str = "Mondo prepaid account"
    ) -> Account:
        account = Account(
            id=new_id("acc"),
            kind="customer",
            user_id=user_id,
            description=description,
            type="uk_prepaid",
            currency="GBP",
            country_code="GB",
            balance=0,
            held=0,
            closed=False,
            created=datetime.now(UTC),
        )
        session.add(account)
        await session.flush()
        await self.outbox.emit(
            session,
            ACCOUNTS_TOPIC,
            account.id,
            AccountCreated(account_id=account.id, user_id=user_id, currency="GBP", description=description),
        )
        return account

    async def owned_account(self, session: AsyncSession, user_id: str, account_id: str) -> Account:
        """The caller's own account, or a 404/403 that reveals nothing about anyone else's."""
        account = await repo.get_account(session, account_id)
        if account is None or account.kind != "customer":
            raise not_found("account", "no account with that id")
        if account.user_id != user_id:
            raise forbidden("insufficient_permissions", "that account does not belong to you")
        return account

    async def spend_today(self, session: AsyncSession, account_id: str, now: datetime | None = None) -> int:
        return await repo.card_spend_since(session, account_id, spend_day_start(now or datetime.now(UTC)))

    # Top-ups ----------------------------------------------------------------------------------

    async def topup(
        self, session: AsyncSession, user_id: str, account_id: str, amount: int, currency: str
    ) -> tuple[str, Account]:
        await self.owned_account(session, user_id, account_id)
        if not self.settings.topup_min <= amount <= self.settings.topup_max:
            raise bad_request(
                "bad_param.amount",
                f"a top-up is between {self.settings.topup_min} and {self.settings.topup_max} minor units",
                param="amount",
            )
        account = await self._lock_customer(session, account_id)
        if account.closed:
            raise conflict("account_closed", "the account is closed")
        if parse_currency(currency) != account.currency:
            raise bad_request(
                "bad_param.currency", f"this account holds {account.currency}", param="currency"
            )
        topup_id = new_id("topup")
        entry_id = await self._post(
            session,
            account,
            "topup",
            topup_id,
            "Top up",
            transfer(TOPUP_FUNDING, account.id, amount, currency),
        )
        await self.outbox.emit(
            session,
            LEDGER_TOPIC,
            account.id,
            TopupCompleted(
                account_id=account.id, amount=amount, currency=currency, balance=account.balance,
                available=account.available, topup_id=topup_id, entry_id=entry_id,
            ),
        )  # fmt: skip
        return topup_id, account

    # The card money path ----------------------------------------------------------------------

    async def place_holds(
        self, session: Executor, placements: Sequence[HoldPlacement], *, provisional: bool
    ) -> list[HoldResult | BankError]:
        """Reserve money for card authorisations, or record why not: one answer per placement, in
        order, exactly as if each were placed alone in that order (decision 0030). Idempotent on the
        network's id: a repeat, in this batch or an earlier one, gets the first one's hold. A bad
        placement (unknown account, an id reused for another hold) fails alone.

        `provisional` holds wait in `unconfirmed_holds` until cards is seen to have recorded them,
        and are released if it has not (decision 0031). A constant number of statements per batch.
        Raises HoldIdTaken when a concurrent batch took one of the network ids first (rare: cards
        makes a repeat in flight wait for its original); the edge then places the batch again."""
        now = datetime.now(UTC)
        account_ids = [p.request.account_id for p in placements]
        network_ids = [p.request.network_txn_id for p in placements]
        funds = await repo.lock_funds(session, account_ids)
        earlier = await repo.holds_by_network_ids(session, network_ids)
        answers: list[HoldResult | BankError | None] = [None] * len(placements)
        fresh: dict[str, int] = {}  # network id -> index of its first placement in this batch
        for i, placement in enumerate(placements):
            request = placement.request
            account = funds.get(request.account_id)
            if account is None or account.kind != "customer":
                answers[i] = not_found("account", "no account with that id")
            elif (hold := earlier.get(request.network_txn_id)) is not None:
                answers[i] = _repeat(hold, request, account)
            elif request.network_txn_id not in fresh:
                fresh[request.network_txn_id] = i
        order = sorted(fresh.values())
        decisions = decide_holds(funds, [placements[i].request for i in order])
        holds = [self._new_hold(placements[i], d, now) for i, d in zip(order, decisions, strict=True)]
        inserted = await repo.insert_holds(session, holds, now, provisional=provisional)
        if len(inserted) < len(holds):  # a concurrent batch placed one of the ids, and has committed
            raise HoldIdTaken
        events = []
        for i, hold, decision in zip(order, holds, decisions, strict=True):
            answers[i] = HoldResult(hold, Money(decision.balance, decision.available))
            if hold.status == "active":
                events.append(Outgoing(LEDGER_TOPIC, hold.account_id, HoldPlaced(
                    account_id=hold.account_id, amount=-hold.amount, currency=hold.currency,
                    balance=decision.balance, available=decision.available, hold_id=hold.id,
                    network_txn_id=hold.network_txn_id,
                ), traceparent=placements[i].traceparent))  # fmt: skip
        await self.outbox.emit_many(session, events)
        for i, placement in enumerate(placements):  # repeats of a placement earlier in this batch
            if answers[i] is None:
                first = answers[fresh[placement.request.network_txn_id]]
                if isinstance(first, HoldResult):
                    first = _repeat(first.hold, placement.request, first.account)
                answers[i] = first
        return [answer for answer in answers if answer is not None]

    def _new_hold(self, placement: HoldPlacement, decision: HoldDecision, now: datetime) -> Hold:
        request, reason = placement.request, decision.decline_reason
        default_expiry = now + timedelta(days=self.settings.hold_default_expiry_days)
        return Hold(
            id=new_id("hold"), account_id=request.account_id, network_txn_id=request.network_txn_id,
            amount=request.amount, currency=request.currency, status="declined" if reason else "active",
            decline_reason=reason, captured_amount=None, entry_id=None, created=now, updated=now,
            expires_at=now if reason else (placement.expires_at or default_expiry),
        )  # fmt: skip

    async def place_hold(
        self,
        session: Executor,
        *,
        account_id: str,
        network_txn_id: str,
        amount: int,
        currency: str,
        expires_at: datetime | None = None,
    ) -> HoldResult:
        """One hold, placed for good at once (a reversal's replacement hold): a batch of one."""
        request = HoldRequest(account_id, network_txn_id, amount, currency)
        (answer,) = await self.place_holds(session, [HoldPlacement(request, expires_at)], provisional=False)
        if isinstance(answer, BankError):
            raise answer
        return answer

    async def capture_hold(
        self, session: AsyncSession, *, network_txn_id: str, amount: int, over_capture_tolerance: int = 0
    ) -> HoldResult:
        """Clear an authorisation, possibly for a different amount. Idempotent."""
        hold, account = await self._locked_hold(session, network_txn_id)
        if hold.status == "captured":
            return HoldResult(hold, account)
        if hold.status != "active":
            raise conflict("hold_not_active", f"the hold is {hold.status}; post the clearing instead")
        if not capture_allowed(
            held=hold.amount, capture=amount, over_capture_tolerance=over_capture_tolerance
        ):
            raise BankError(
                "unprocessable.capture_exceeds_hold",
                f"capture of {amount} exceeds the hold of {hold.amount} "
                f"plus the tolerance of {over_capture_tolerance}",
            )
        account.held -= hold.amount
        entry_id = await self._post(
            session, account, "card_capture", network_txn_id, "Card payment",
            transfer(account.id, CARD_SCHEME, amount, hold.currency),
        )  # fmt: skip
        hold.status, hold.captured_amount, hold.entry_id, hold.updated = "captured", amount, entry_id, _now()
        await self.outbox.emit(
            session,
            LEDGER_TOPIC,
            account.id,
            HoldCaptured(
                account_id=account.id, amount=-amount, currency=hold.currency, balance=account.balance,
                available=account.available, hold_id=hold.id, network_txn_id=network_txn_id,
                entry_id=entry_id, held_amount=hold.amount,
            ),
        )  # fmt: skip
        return HoldResult(hold, account)

    async def release_hold(self, session: AsyncSession, *, network_txn_id: str) -> HoldResult:
        """Give the held money back (a reversal). Idempotent."""
        hold, account = await self._locked_hold(session, network_txn_id)
        if hold.status in ("released", "expired", "declined"):
            return HoldResult(hold, account)
        if hold.status == "captured":
            raise conflict("hold_captured", "the hold was already captured; refund it instead")
        await self._end_hold(session, hold, account, "released")
        return HoldResult(hold, account)

    async def force_post(
        self,
        session: AsyncSession,
        *,
        account_id: str,
        network_txn_id: str,
        amount: int,
        currency: str,
        kind: str,
    ) -> PostingResult:
        """Post card money with no hold: a forced clearing (debit) or a refund (credit). Idempotent."""
        if kind not in ("debit", "credit"):
            raise bad_request("bad_param.kind", "kind is debit or credit", param="kind")
        entry_kind = "card_force_debit" if kind == "debit" else "card_credit"
        account = await self._lock_customer(session, account_id)
        if (existing := await repo.entry_by_reference(session, entry_kind, network_txn_id)) is not None:
            posted = await repo.posted_amount(session, existing.id, account.id)
            if existing.account_id != account.id or abs(posted) != amount:
                raise conflict("network_txn_id_reused", "that network transaction id was posted differently")
            return PostingResult(existing.id, account)
        if currency != account.currency:
            raise bad_request(
                "bad_param.currency", f"this account holds {account.currency}", param="currency"
            )
        lines = (
            transfer(account.id, CARD_SCHEME, amount, currency)
            if kind == "debit"
            else transfer(CARD_SCHEME, account.id, amount, currency)
        )
        description = "Card payment (forced)" if kind == "debit" else "Card refund"
        entry_id = await self._post(session, account, entry_kind, network_txn_id, description, lines)
        signed = -amount if kind == "debit" else amount
        await self.outbox.emit(
            session,
            LEDGER_TOPIC,
            account.id,
            AccountPosted(
                account_id=account.id, amount=signed, currency=currency, balance=account.balance,
                available=account.available, entry_id=entry_id, network_txn_id=network_txn_id,
                kind=f"force_{kind}" if kind == "debit" else "credit",
            ),
        )  # fmt: skip
        return PostingResult(entry_id, account)

    async def expire_hold(self, session: AsyncSession, network_txn_id: str, now: datetime) -> bool:
        """Release a hold whose time is up (the clearing never came). False if it is no longer due."""
        hold, account = await self._locked_hold(session, network_txn_id)
        if hold.status != "active" or hold.expires_at > now:
            return False
        await self._end_hold(session, hold, account, "expired")
        return True

    async def release_unbacked(self, session: AsyncSession, network_txn_id: str) -> bool:
        """Release a provisional hold that no recorded authorisation stands behind; True if it was
        still active. It is no longer unconfirmed either way."""
        await repo.forget_unconfirmed(session, [network_txn_id])
        hold, account = await self._locked_hold(session, network_txn_id)
        if hold.status != "active":
            return False
        await self._end_hold(session, hold, account, "released")
        return True

    # Internals --------------------------------------------------------------------------------

    async def _lock_customer(self, session: AsyncSession, account_id: str) -> Account:
        account = await repo.lock_account(session, account_id)
        if account is None or account.kind != "customer":
            raise not_found("account", "no account with that id")
        return account

    async def _locked_hold(self, session: AsyncSession, network_txn_id: str) -> tuple[Hold, Account]:
        found = await repo.hold_by_network_id(session, network_txn_id)
        if found is None:
            raise not_found("hold", "no hold for that network transaction id")
        account = await self._lock_customer(session, found.account_id)
        await session.refresh(found)  # re-read under the account lock
        return found, account

    async def _end_hold(self, session: AsyncSession, hold: Hold, account: Account, status: str) -> None:
        account.held -= hold.amount
        hold.status, hold.updated = status, _now()
        event = HoldReleased if status == "released" else HoldExpired
        await self.outbox.emit(
            session,
            LEDGER_TOPIC,
            account.id,
            event(
                account_id=account.id, amount=hold.amount, currency=hold.currency, balance=account.balance,
                available=account.available, hold_id=hold.id, network_txn_id=hold.network_txn_id,
            ),
        )  # fmt: skip

    async def _post(
        self,
        session: AsyncSession,
        account: Account,
        kind: str,
        reference: str,
        description: str,
        lines: list[Line],
    ) -> str:
        check_balanced(lines)
        entry_id = await repo.add_entry(
            session,
            kind=kind,
            account_id=account.id,
            reference=reference,
            description=description,
            lines=lines,
        )
        if entry_id is None:  # a concurrent posting took this reference (another account's, say)
            raise conflict("network_txn_id_reused", "that network transaction id was posted differently")
        account.balance += sum(line.amount for line in lines if line.account_id == account.id)
        if account.balance < 0:
            NEGATIVE_BALANCES.inc()
        await session.flush()
        return entry_id

    # Pots and payments between customers (decision 0037) --------------------------------------------

    async def owned_pot(self, session: AsyncSession, user_id: str, pot_id: str) -> Pot:
        """The caller's own pot, or a 404/403 that reveals nothing about anyone else's."""
        pot = await repo.get_pot(session, pot_id) if plausible_id(pot_id) else None
        if pot is None:
            raise not_found("pot", "no pot with that id")
        if pot.user_id != user_id:
            raise forbidden("insufficient_permissions", "that pot does not belong to you")
        return pot

    async def pots(
        self, session: AsyncSession, user_id: str, current_account_id: str
    ) -> list[tuple[Pot, Account]]:
        await self.owned_account(session, user_id, current_account_id)
        return await repo.pots_of(session, current_account_id)

    async def pots_balance(self, session: AsyncSession, current_account_id: str) -> int:
        return await repo.pots_balance(session, current_account_id)

    async def create_pot(
        self,
        session: AsyncSession,
        user_id: str,
        current_account_id: str,
        *,
        name: str,
        style: str,
        goal_amount: int | None,
    ) -> tuple[Pot, Account]:
        account = await self.owned_account(session, user_id, current_account_id)
        if account.closed:
            raise conflict("account_closed", "the account is closed")
        now = _now()
        pot_id = new_id("pot")
        money = Account(
            id=pot_id, kind="pot", user_id=user_id, description=name, type="uk_retail_pot",
            currency=account.currency, country_code=account.country_code, balance=0, held=0, closed=False,
            created=now,
        )  # fmt: skip
        session.add(money)
        await session.flush()
        pot = Pot(
            id=pot_id, current_account_id=account.id, user_id=user_id, name=name, style=style,
            goal_amount=goal_amount, type="default", created=now, updated=now, deleted=False,
        )  # fmt: skip
        session.add(pot)
        await session.flush()
        await self.outbox.emit(
            session, ACCOUNTS_TOPIC, account.id,
            PotCreated(
                account_id=account.id, pot_id=pot_id, user_id=user_id, name=name, currency=money.currency
            ),
        )  # fmt: skip
        return pot, money

    async def delete_pot(self, session: AsyncSession, user_id: str, pot_id: str) -> tuple[Pot, Account]:
        """Close an empty pot. Deleting a deleted pot answers the pot as it is."""
        await self.owned_pot(session, user_id, pot_id)
        money = (await repo.lock_accounts(session, [pot_id]))[pot_id]
        pot = await repo.get_pot(session, pot_id)  # as it stands under the lock
        assert pot is not None
        if pot.deleted:
            return pot, money
        if money.balance != 0:
            raise conflict("pot_not_empty", "the pot has money in it: withdraw it before deleting the pot")
        pot.deleted, pot.updated, money.closed = True, _now(), True
        await session.flush()
        await self.outbox.emit(
            session, ACCOUNTS_TOPIC, pot.current_account_id,
            PotDeleted(account_id=pot.current_account_id, pot_id=pot.id, user_id=user_id),
        )  # fmt: skip
        return pot, money

    async def move_pot(
        self, session: AsyncSession, user_id: str, pot_id: str, account_id: str, amount: int, *, deposit: bool
    ) -> tuple[Pot, Account]:
        """Move money from the pot's current account into the pot (`deposit`) or back. One journal entry
        between the two ledger accounts, both row-locked; never beyond what the source has available."""
        param = "source_account_id" if deposit else "destination_account_id"
        pot = await self.owned_pot(session, user_id, pot_id)
        await self.owned_account(session, user_id, account_id)
        if account_id != pot.current_account_id:
            raise bad_request(
                f"bad_param.{param}",
                "a pot moves money only to and from its own current account",
                param=param,
            )
        locked = await repo.lock_accounts(session, [pot_id, account_id])
        money, account = locked[pot_id], locked[account_id]
        fresh = await repo.get_pot(session, pot_id)  # as it stands under the lock
        assert fresh is not None
        pot = fresh
        if pot.deleted:
            raise conflict("pot_deleted", "the pot is deleted")
        source, destination = (account, money) if deposit else (money, account)
        refusal = move_refusal(
            amount=amount, available=source.available, currency=account.currency,
            source_currency=source.currency, destination_currency=destination.currency,
            source_closed=source.closed, destination_closed=destination.closed,
        )  # fmt: skip
        if refusal == "insufficient_funds":
            where = "account" if deposit else "pot"
            raise BankError(f"insufficient_funds.{where}", f"the {where} has less than {amount} available")
        if refusal is not None:
            raise conflict(refusal, "the money cannot move: " + refusal.replace("_", " "))
        transfer_id = new_id("potmove")
        entry_id = await self._post_transfer(
            session, (source, destination), kind=POT_DEPOSIT if deposit else POT_WITHDRAWAL,
            entry_account=account.id, reference=transfer_id, description=f"Pot: {pot.name}",
            lines=transfer(source.id, destination.id, amount, account.currency),
        )  # fmt: skip
        pot.updated = _now()
        event = (PotDeposited if deposit else PotWithdrawn)(
            account_id=account.id, amount=-amount if deposit else amount, currency=account.currency,
            balance=account.balance, available=account.available, pot_id=pot.id, pot_name=pot.name,
            pot_balance=money.balance, transfer_id=transfer_id, entry_id=entry_id,
        )  # fmt: skip
        await self.outbox.emit(session, LEDGER_TOPIC, account.id, event)
        return pot, money

    async def pay(
        self,
        session: AsyncSession,
        user_id: str,
        *,
        source_account_id: str,
        amount: int,
        currency: str,
        recipient: str,
        reference: str,
    ) -> PaymentResult:
        """Send money to another customer: one journal entry between the two accounts, both row-locked;
        limited by the sender's available balance and daily limit; never to yourself, to a closed
        account or across currencies."""
        await self.owned_account(session, user_id, source_account_id)
        target = await self._recipient(session, recipient)
        if target.user_id == user_id:
            raise BankError(
                "unprocessable.pay_yourself", "a payment goes to another customer, not to yourself"
            )
        locked = await repo.lock_accounts(session, [source_account_id, target.id])
        source, destination = locked[source_account_id], locked[target.id]
        if currency != source.currency:
            raise bad_request("bad_param.currency", f"this account holds {source.currency}", param="currency")
        refusal = move_refusal(
            amount=amount, available=source.available, currency=currency, source_currency=source.currency,
            destination_currency=destination.currency, source_closed=source.closed,
            destination_closed=destination.closed,
        )  # fmt: skip
        if refusal == "account_closed":
            raise conflict("account_closed", "your account or the recipient's is closed")
        if refusal == "currency_mismatch":
            raise BankError(
                "unprocessable.currency_mismatch", "the recipient's account holds another currency"
            )
        if refusal == "insufficient_funds":
            raise BankError("insufficient_funds.available_balance", f"less than {amount} is available")
        now = _now()
        sent = await repo.payments_sent_since(session, source.id, spend_day_start(now))
        if daily_limit_refusal(limit=self.settings.p2p_daily_limit, sent_today=sent, amount=amount):
            raise BankError(
                "unprocessable.daily_limit_exceeded",
                f"payments from this account are limited to {self.settings.p2p_daily_limit} a day; "
                f"{max(0, self.settings.p2p_daily_limit - sent)} is left today",
            )
        payment_id = new_id("p2p")
        entry_id = await self._post_transfer(
            session, (source, destination), kind=P2P_PAYMENT, entry_account=source.id, reference=payment_id,
            description=reference or "Payment", lines=transfer(source.id, destination.id, amount, currency),
        )  # fmt: skip
        payment = Payment(
            id=payment_id, user_id=user_id, source_account_id=source.id,
            destination_account_id=destination.id, amount=amount, currency=currency, reference=reference,
            entry_id=entry_id, created=now,
        )  # fmt: skip
        session.add(payment)
        await session.flush()
        sender, receiver = (
            await repo.get_user(session, user_id),
            await repo.get_user(session, target.user_id or ""),
        )
        assert sender is not None and receiver is not None
        common = {
            "currency": currency,
            "payment_id": payment_id,
            "entry_id": entry_id,
            "reference": reference,
        }
        await self.outbox.emit_many(session, [
            Outgoing(LEDGER_TOPIC, source.id, PaymentSent(
                account_id=source.id, amount=-amount, balance=source.balance, available=source.available,
                counterparty_account_id=destination.id, counterparty_user_id=receiver.id,
                counterparty_name=receiver.name, **common,
            )),
            Outgoing(LEDGER_TOPIC, destination.id, PaymentReceived(
                account_id=destination.id, amount=amount, balance=destination.balance,
                available=destination.available, counterparty_account_id=source.id,
                counterparty_user_id=sender.id, counterparty_name=sender.name, **common,
            )),
        ])  # fmt: skip
        return PaymentResult(payment, source, receiver)

    async def _recipient(self, session: AsyncSession, recipient: str) -> Account:
        """The account a payment's recipient names: another customer's email (their oldest open current
        account) or a current account's id."""
        value = recipient.strip()
        account: Account | None
        if "@" in value:
            user = await repo.user_by_email(session, value)
            account = await repo.first_account_of(session, user.id) if user is not None else None
        elif value.startswith("acc_") and plausible_id(value):
            account = await repo.get_account(session, value)
            if account is not None and account.kind != "customer":
                account = None
        else:
            raise bad_request(
                "bad_param.recipient",
                "recipient is another customer's email or account id",
                param="recipient",
            )
        if account is None:
            raise not_found("recipient", "no customer with that email or account id")
        return account

    async def _post_transfer(
        self,
        session: AsyncSession,
        accounts: Sequence[Account],
        *,
        kind: str,
        entry_account: str,
        reference: str,
        description: str,
        lines: list[Line],
    ) -> str:
        """A journal entry between the bank's own (locked) accounts, their balances moved with it."""
        check_balanced(lines)
        entry_id = await repo.add_transfer_entry(
            session,
            kind=kind,
            account_id=entry_account,
            reference=reference,
            description=description,
            lines=lines,
        )
        for account in accounts:
            account.balance += sum(line.amount for line in lines if line.account_id == account.id)
        await session.flush()
        return entry_id


@dataclass(frozen=True)
class PaymentResult:
    payment: Payment
    source: Account
    recipient: User


def _now() -> datetime:
    return datetime.now(UTC)
