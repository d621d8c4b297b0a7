"""Owners' use cases: register, list, delete, secrets and their rotation, history, re-sending.

Who owns an account is asked of accounts when a webhook is registered or an account's webhooks are
listed; a webhook remembers its owner, so everything about one webhook needs only this service.
Another user's webhook answers 404, as if it did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.webhooks import repository as repo
from services.webhooks import signing
from services.webhooks.accounts_client import AccountsClient
from services.webhooks.config import WebhooksSettings
from services.webhooks.delivery import Deliverer
from services.webhooks.models import Attempt, Delivery, Webhook
from services.webhooks.ssrf import UrlRefused, check_url, parse_networks
from shared.db import Database, after_commit
from shared.errors import BankError, bad_request, conflict, forbidden, not_found
from shared.ids import new_id


@dataclass(frozen=True)
class Secrets:
    secret: str
    previous: str | None
    previous_expires_at: datetime | None


class WebhookService:
    def __init__(
        self,
        db: Database,
        accounts: AccountsClient,
        box: signing.SecretBox,
        deliverer: Deliverer,
        settings: WebhooksSettings,
    ) -> None:
        self.db = db
        self.accounts = accounts
        self.box = box
        self.deliverer = deliverer
        self.settings = settings
        self.allow = parse_networks(settings.allow_networks)

    async def _owned_account(self, user_id: str, account_id: str) -> None:
        account = await self.accounts.account(account_id)
        if account is None:
            raise not_found("account", "no account with that id")
        if account.user_id != user_id:
            raise forbidden("insufficient_permissions", "that account does not belong to you")
        if account.closed:
            raise bad_request("account_closed", "that account is closed")

    async def register(self, user_id: str, account_id: str, url: str) -> tuple[Webhook, str]:
        try:
            await check_url(url, allow_http=self.settings.allow_http, allow=self.allow)
        except UrlRefused as exc:
            raise BankError(f"bad_request.{exc.reason}", exc.message, params={"param": "url"}) from None
        await self._owned_account(user_id, account_id)
        secret = signing.new_secret()
        webhook_id = new_id("webhook")
        async with self.db.transaction() as session:
            if await repo.count_webhooks(session, account_id) >= self.settings.max_webhooks_per_account:
                raise conflict("too_many_webhooks", "this account has as many webhooks as it may have")
            webhook = Webhook(
                id=webhook_id,
                account_id=account_id,
                user_id=user_id,
                url=url.strip(),
                secret=self.box.seal(webhook_id, secret),
                status="active",
            )
            session.add(webhook)
        return webhook, secret

    async def of_account(self, user_id: str, account_id: str) -> list[Webhook]:
        await self._owned_account_for_reading(user_id, account_id)
        async with self.db.read() as session:
            return await repo.webhooks_of_account(session, account_id)

    async def _owned_account_for_reading(self, user_id: str, account_id: str) -> None:
        account = await self.accounts.account(account_id)
        if account is None:
            raise not_found("account", "no account with that id")
        if account.user_id != user_id:
            raise forbidden("insufficient_permissions", "that account does not belong to you")

    async def _mine(self, user_id: str, webhook_id: str) -> Webhook:
        async with self.db.read() as session:
            webhook = await repo.get_webhook(session, webhook_id)
        if webhook is None or webhook.user_id != user_id:
            raise not_found("webhook", "no webhook with that id")
        return webhook

    async def delete(self, user_id: str, webhook_id: str) -> None:
        async with self.db.transaction() as session:
            webhook = await repo.get_webhook(session, webhook_id, lock=True)
            if webhook is None or webhook.user_id != user_id:
                raise not_found("webhook", "no webhook with that id")
            webhook.status = "deleted"
            webhook.updated = datetime.now(UTC)
            await repo.fail_pending(session, webhook_id, "the webhook was deleted")

    async def secrets(self, user_id: str, webhook_id: str) -> Secrets:
        webhook = await self._mine(user_id, webhook_id)
        return self._open(webhook, datetime.now(UTC))

    def _open(self, webhook: Webhook, now: datetime) -> Secrets:
        previous = expires = None
        if webhook.previous_secret is not None and webhook.previous_secret_expires_at is not None:
            if webhook.previous_secret_expires_at > now:
                previous = self.box.open(webhook.id, webhook.previous_secret)
                expires = webhook.previous_secret_expires_at
        return Secrets(self.box.open(webhook.id, webhook.secret), previous, expires)

    async def rotate(self, user_id: str, webhook_id: str, overlap_seconds: float | None) -> Secrets:
        overlap = self.settings.rotation_overlap_seconds if overlap_seconds is None else overlap_seconds
        if not 0 <= overlap <= 7 * 86_400:
            raise bad_request(
                "bad_param", "overlap_seconds must be between 0 and 604800", param="overlap_seconds"
            )
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            webhook = await repo.get_webhook(session, webhook_id, lock=True)
            if webhook is None or webhook.user_id != user_id:
                raise not_found("webhook", "no webhook with that id")
            secret = signing.new_secret()
            webhook.previous_secret = webhook.secret
            webhook.previous_secret_expires_at = now + timedelta(seconds=overlap)
            webhook.secret = self.box.seal(webhook.id, secret)
            webhook.updated = now
            return self._open(webhook, now)

    async def history(
        self, user_id: str, webhook_id: str, limit: int, before: datetime | None
    ) -> list[tuple[Delivery, list[Attempt]]]:
        await self._mine(user_id, webhook_id)
        async with self.db.read() as session:
            deliveries = await repo.deliveries_of(session, webhook_id, limit, before)
            attempts = await repo.attempts_of(session, [d.id for d in deliveries])
        return [(d, attempts[d.id]) for d in deliveries]

    async def retry(self, user_id: str, webhook_id: str, delivery_id: str) -> tuple[Delivery, list[Attempt]]:
        await self._mine(user_id, webhook_id)
        async with self.db.transaction() as session:
            delivery = await repo.get_delivery(session, webhook_id, delivery_id)
            if delivery is None:
                raise not_found("delivery", "no delivery with that id for this webhook")
            webhook = await repo.get_webhook(session, webhook_id, lock=True)
            if webhook is None or webhook.status != "active":
                raise conflict("webhook_disabled", "the webhook is disabled: recover it to re-enable it")
            if delivery.lease_until is not None and delivery.status == "pending":
                raise conflict("delivery_in_flight", "an attempt of this delivery is in flight")
            await repo.resend(session, delivery_id)
            after_commit(session, self.deliverer.wake.set)
        async with self.db.read() as session:
            fresh = await repo.get_delivery(session, webhook_id, delivery_id)
            attempts = await repo.attempts_of(session, [delivery_id])
        assert fresh is not None
        return fresh, attempts[delivery_id]

    async def recover(self, user_id: str, webhook_id: str, since: datetime) -> int:
        """Re-send every failed delivery created since `since`, and re-enable a disabled webhook."""
        await self._mine(user_id, webhook_id)
        async with self.db.transaction() as session:
            webhook = await repo.get_webhook(session, webhook_id, lock=True)
            if webhook is None:
                raise not_found("webhook", "no webhook with that id")
            if webhook.status == "disabled":
                webhook.status = "active"
                webhook.disabled_reason = None
                webhook.failing_since = None
                webhook.updated = datetime.now(UTC)
            count = await repo.recover(session, webhook_id, since)
            after_commit(session, self.deliverer.wake.set)
        return count
