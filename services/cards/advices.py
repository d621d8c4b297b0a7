"""Advices (0120): what the network decided in our place while we could not answer.

An approved spend is force-posted (`advice:<network id>`) unless we had approved it ourselves (our
answer was lost, not our decision: our hold backs it). If accounts cannot take the posting the advice
is answered 91 and not recorded; networks store and forward advices until acknowledged.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from services.cards import repository as repo
from services.cards.accounts_client import AccountsClient, AccountsRefused, AccountsUnavailable
from services.cards.authorise import approval_code, emit_decision, request_digest
from services.cards.decision import DeclineReason
from services.cards.models import Authorisation, Card
from services.cards.network import AdviceRequest, ResponseCode
from services.cards.vault import Vault
from shared.db import Database
from shared.events.outbox import Outbox
from shared.ids import new_id
from shared.observability import log_fields

log = logging.getLogger("services.cards.advices")


class Advices:
    def __init__(self, db: Database, outbox: Outbox, vault: Vault, accounts: AccountsClient) -> None:
        self.db = db
        self.outbox = outbox
        self.vault = vault
        self.accounts = accounts

    async def advise(self, msg: AdviceRequest) -> dict[str, Any]:
        nid = msg.network_transaction_id
        fingerprint = self.vault.fingerprint(msg.pan)
        async with self.db.transaction() as session:
            card, prior = await repo.card_for_message(session, fingerprint, nid)
            existing = None
            if card is None or prior is not None:  # the row itself, to record the advice on it
                existing = await repo.authorisation_by_network_id(session, nid, lock=True)
            if existing is not None and existing.advice_response is not None:
                return existing.advice_response
            if existing is not None and existing.status == repo.VOIDED:  # we never answered it: as if new
                fresh = self._advice_row(card, msg, request_digest(msg, fingerprint), datetime.now(UTC))
                for column in Authorisation.__table__.columns.keys():
                    if column not in ("id", "network_transaction_id"):
                        setattr(existing, column, getattr(fresh, column))
            ours = existing is not None and existing.status != "declined"
            posted = False
            if card is not None and _approved(msg) and msg.transaction.spends and not ours:
                try:
                    posted = await self._force_post(card, msg)
                except AccountsUnavailable:
                    return _acknowledgement(ResponseCode.ISSUER_UNAVAILABLE, nid, None)
            now = datetime.now(UTC)
            auth = existing or self._advice_row(card, msg, request_digest(msg, fingerprint), now)
            auth.advice_response = _acknowledgement(ResponseCode.APPROVED, nid, auth.id)
            auth.updated = now
            if posted:
                auth.status, auth.stand_in, auth.posted_amount = "approved", True, msg.amount
                auth.approval_code = auth.approval_code or approval_code()
                auth.decline_reason = auth.decline_detail = None
            if existing is None:
                session.add(auth)
            if card is not None and (existing is None or posted):
                await emit_decision(self.outbox, session, auth, card)
        return auth.advice_response

    async def _force_post(self, card: Card, msg: AdviceRequest) -> bool:
        """Debit the stand-in approval; False if accounts refuses it (clearing will force-post it)."""
        nid = msg.network_transaction_id
        try:
            await self.accounts.post(card.account_id, f"advice:{nid}", msg.amount, msg.currency, "debit")
        except AccountsRefused as exc:
            log.warning("accounts refused an advice posting",
                        extra=log_fields(network_transaction_id=nid, code=exc.code))  # fmt: skip
            return False
        return True

    def _advice_row(self, card: Card | None, msg: AdviceRequest, digest: str, now: datetime) -> Authorisation:
        auth_id = new_id("auth")
        approved = _approved(msg)
        approval = approval_code() if approved else None
        response = {"mti": "0110", "response_code": msg.response_code, "authorisation_id": auth_id,
                    "network_transaction_id": msg.network_transaction_id}  # fmt: skip
        if approval:
            response["approval_code"] = approval
        return Authorisation(
            id=auth_id, network_transaction_id=msg.network_transaction_id, kind="advice",
            card_id=card.id if card else None, account_id=card.account_id if card else None,
            processing_code=msg.processing_code, amount=msg.amount, currency=msg.currency,
            status="approved" if approved else "declined", response_code=msg.response_code,
            approval_code=approval, decline_reason=None if approved else DeclineReason.OTHER.value,
            decline_detail=None if approved else "stand_in_declined", hold_id=None, held_amount=0,
            posted_amount=0, reversed_amount=0, settled_amount=0, stand_in=True,
            merchant=msg.merchant.model_dump(mode="json"), stan=msg.stan, rrn=msg.rrn,
            transmission_time=msg.transmission_time, request_digest=digest, response=response,
            expires_at=None, created=now, updated=now,
        )  # fmt: skip


def _approved(msg: AdviceRequest) -> bool:
    return msg.response_code == ResponseCode.APPROVED.value


def _acknowledgement(code: ResponseCode, nid: str, authorisation_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"mti": "0130", "response_code": code.value, "network_transaction_id": nid}
    if authorisation_id:
        body["authorisation_id"] = authorisation_id
    return body
