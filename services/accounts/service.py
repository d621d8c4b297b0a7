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

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
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
    TopupCompleted,
)
from services.accounts.ledger import (
    CARD_SCHEME,
    TOPUP_FUNDING,
    Line,
    capture_allowed,
    check_balanced,
    hold_decline_reason,
    spend_day_start,
    transfer,
)
from services.accounts.models import Account, Hold
from services.accounts.observability import NEGATIVE_BALANCES
from shared.db import Executor
from shared.errors import BankError, bad_request, conflict, forbidden, not_found
from shared.events.outbox import Outbox
from shared.ids import new_id
from shared.money import parse_currency


@dataclass(frozen=True)
class HoldResult:
    hold: Hold
    account: Account | repo.LockedAccount


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
        """Reserve money for an authorisation, or record why not. Idempotent on the network's id.

        The card network's hot path: plain rows and two statements (lock and read the account; insert
        the hold, reserve its amount and write its event), no ORM unit of work (decisions 0018, 0020,
        0025)."""
        account = await repo.lock_account_row(session, account_id)
        if account is None or account.kind != "customer":
            raise not_found("account", "no account with that id")
        now = datetime.now(UTC)
        reason = hold_decline_reason(
            available=account.available, amount=amount, closed=account.closed,
            account_currency=account.currency, currency=currency,
        )  # fmt: skip
        hold = Hold(
            id=new_id("hold"),
            account_id=account_id,
            network_txn_id=network_txn_id,
            amount=amount,
            currency=currency,
            status="declined" if reason else "active",
            decline_reason=reason,
            captured_amount=None,
            entry_id=None,
            created=now,
            updated=now,
            expires_at=now
            if reason
            else (expires_at or now + timedelta(days=self.settings.hold_default_expiry_days)),
        )
        event = None
        reserved = replace(account, held=account.held + amount)  # as the statement stores it if active
        if reason is None:  # the event is written only if the hold is (not for a repeat)
            event = self.outbox.stage(
                LEDGER_TOPIC,
                account_id,
                HoldPlaced(
                    account_id=account_id, amount=-amount, currency=currency, balance=reserved.balance,
                    available=reserved.available, hold_id=hold.id, network_txn_id=network_txn_id,
                ),
            )  # fmt: skip
        # Insert first, look for a repeat only if the network id is taken: the common case costs one
        # statement, and a concurrent first use of the id on another account cannot slip in between.
        if not await repo.insert_hold_and_reserve(session, hold, event):
            existing = await repo.hold_row(session, network_txn_id)
            if existing is None or existing.account_id != account_id or existing.amount != amount:
                raise conflict(
                    "network_txn_id_reused", "that network transaction id was used for another hold"
                )
            return HoldResult(existing, account)
        if event is not None:
            self.outbox.written(session, event)
            account = reserved
        return HoldResult(hold, account)

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
        try:
            async with session.begin_nested():
                entry_id = await self._post(session, account, entry_kind, network_txn_id, description, lines)
        except IntegrityError:
            raise conflict(
                "network_txn_id_reused", "that network transaction id was posted differently"
            ) from None
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
        account.balance += sum(line.amount for line in lines if line.account_id == account.id)
        if account.balance < 0:
            NEGATIVE_BALANCES.inc()
        await session.flush()
        return entry_id


def _now() -> datetime:
    return datetime.now(UTC)
