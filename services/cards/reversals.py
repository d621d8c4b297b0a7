"""Reversals (0400): give back all or part of an authorisation, matched by its network id.

Full reversal: release the hold. If accounts does not answer, the reversal is
still accepted (00) and a compensation releases the hold later: a reversal must
not fail because of us.

Partial reversal (`replacement_amount`, DE 95, what the authorisation stands at
afterwards): release the hold, then place a new one for the remainder under
`<network id>:r<remainder>`; clearing captures whichever hold is current. The
two calls are not atomic: between them the money is briefly available, and if
another authorisation takes it the re-hold is declined and the clearing is
force-posted instead (docs/decisions/0009-cards.md). If the release itself
fails we answer 91 and record nothing; the network repeats reversals until
answered.

A stand-in approval (advice) has no hold but a posting: reversing it credits
the difference back. A reversal for a network id we never answered is
acknowledged, and a compensation releases any hold our unrecorded answer may
have left (a crash between accounts' hold and our commit).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.cards import repository as repo
from services.cards.accounts_client import AccountsClient, AccountsRefused, AccountsUnavailable
from services.cards.authorise import event_fields
from services.cards.events import AUTHORISATIONS_TOPIC, AuthorisationReversed
from services.cards.models import Authorisation, Reversal
from services.cards.network import ResponseCode, ReversalRequest
from shared.db import Database
from shared.events.outbox import Outbox
from shared.ids import new_id
from shared.observability import log_fields

log = logging.getLogger("services.cards.reversals")


def _answer(code: ResponseCode, nid: str, auth: Authorisation | None) -> dict[str, Any]:
    body: dict[str, Any] = {"mti": "0410", "response_code": code.value, "network_transaction_id": nid}
    if auth is not None:
        body["authorisation_id"] = auth.id
    return body


class Reverser:
    def __init__(
        self, db: Database, outbox: Outbox, accounts: AccountsClient, *, rehold_in_doubt_seconds: float = 60.0
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.accounts = accounts
        self.rehold_in_doubt_seconds = rehold_in_doubt_seconds

    async def reverse(self, msg: ReversalRequest) -> dict[str, Any]:
        nid, remaining = msg.network_transaction_id, msg.remaining
        async with self.db.transaction() as session:
            done = await repo.reversal(session, nid, remaining)
            if done is not None:
                return done.response
            auth = await repo.authorisation_by_network_id(session, nid, lock=True)
            if auth is not None and (done := await repo.reversal(session, nid, remaining)) is not None:
                return done.response  # a repeat that raced us finished while we waited for the lock
            if auth is None:
                await repo.add_compensation(session, nid, "reversal_of_unknown_authorisation")
                answer = _answer(ResponseCode.APPROVED, nid, None)
            elif auth.status == "settled":
                answer = _answer(ResponseCode.NOT_PERMITTED, nid, auth)  # cleared already: a refund's job
            else:
                code = await self._apply(session, auth, remaining)
                if code is ResponseCode.ISSUER_UNAVAILABLE:
                    return _answer(code, nid, auth)  # not recorded: the network repeats it
                answer = _answer(code, nid, auth)
            session.add(
                Reversal(
                    id=new_id("rev"), network_transaction_id=nid, replacement_amount=remaining,
                    authorisation_id=auth.id if auth else None, response=answer, created=datetime.now(UTC),
                )
            )  # fmt: skip
        return answer

    async def _apply(self, session: AsyncSession, auth: Authorisation, remaining: int) -> ResponseCode:
        standing = auth.amount - auth.reversed_amount
        if auth.status == "declined" or remaining >= standing:
            return ResponseCode.APPROVED  # nothing (more) to give back
        if auth.hold_id and auth.held_amount > 0:
            if not await self._reduce_hold(session, auth, remaining):
                return ResponseCode.ISSUER_UNAVAILABLE
        elif auth.posted_amount > 0:
            give_back = auth.posted_amount - min(remaining, auth.posted_amount)
            try:
                await self.accounts.post(
                    auth.account_id or "", f"reversal:{auth.network_transaction_id}:{remaining}",
                    give_back, auth.currency, "credit",
                )  # fmt: skip
            except AccountsUnavailable:
                return ResponseCode.ISSUER_UNAVAILABLE
            auth.posted_amount -= give_back
        auth.reversed_amount = auth.amount - remaining
        auth.status = "reversed" if remaining == 0 else "approved"
        auth.updated = datetime.now(UTC)
        card = await repo.get_card(session, auth.card_id) if auth.card_id else None
        if card is not None:
            event = AuthorisationReversed(
                **event_fields(auth, card), reversed_amount=standing - remaining, remaining_amount=remaining
            )
            await self.outbox.emit(session, AUTHORISATIONS_TOPIC, card.account_id, event)
        return ResponseCode.APPROVED

    async def _reduce_hold(self, session: AsyncSession, auth: Authorisation, remaining: int) -> bool:
        """Bring the hold down to `remaining`. False: accounts did not answer, nothing changed here."""
        assert auth.hold_id is not None
        old = auth.hold_id
        try:
            await self.accounts.release_hold(old)
        except AccountsUnavailable:
            if remaining:
                return False
            await repo.add_compensation(session, old, "reversal")
        except AccountsRefused as exc:
            log.warning("accounts refused a release", extra=log_fields(hold_id=old, code=exc.code))
        auth.hold_id, auth.held_amount = None, 0
        if remaining == 0:
            return True
        new = f"{auth.network_transaction_id}:r{remaining}"
        # Committed before the new hold is asked for: if we die before our own commit (which cancels
        # it), the network may clear before it repeats the reversal, and nothing here would point at
        # the new hold; this releases it then instead of leaving the money blocked until expiry.
        async with self.db.transaction() as own:
            await repo.add_compensation(
                own, new, "rehold_in_doubt", after_seconds=self.rehold_in_doubt_seconds
            )
        await repo.cancel_compensation(session, new)  # takes effect only if our transaction commits
        try:
            answer = await self.accounts.place_hold(
                auth.account_id or "", new, remaining, auth.currency,
                auth.expires_at or datetime.now(UTC), hot=False,
            )  # fmt: skip
        except AccountsUnavailable:
            # Unknown: keep pointing at it. Clearing captures it if it exists and force-posts if
            # not; if no clearing comes, it expires with the original's expiry.
            auth.hold_id, auth.held_amount = new, remaining
            return True
        except AccountsRefused as exc:
            log.warning("accounts refused a re-hold", extra=log_fields(hold_id=new, code=exc.code))
            return True
        if answer.status == "active":
            auth.hold_id, auth.held_amount = new, remaining
        return True
