"""The request-side use cases: devices and feed items. One transaction per request, committed here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.notifications import repository
from services.notifications.accounts_client import AccountsClient
from services.notifications.config import NotificationsSettings
from services.notifications.messages import Message
from services.notifications.models import Device, FeedItem
from services.notifications.observability import NOTIFICATIONS_QUEUED
from services.notifications.sender import Sender
from shared.db import Database, after_commit
from shared.errors import BankError, bad_request, forbidden, not_found

PLATFORMS = ("apns", "fcm")
APNS_TOKEN = re.compile(r"^[0-9a-fA-F]{32,200}$")
FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-.]{16,4096}$")
COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")
MAX_URL = 1024
MAX_TITLE = 256
MAX_BODY = 2000


@dataclass(frozen=True)
class FeedItemRequest:
    account_id: str
    type: str
    title: str
    image_url: str
    body: str | None = None
    url: str | None = None
    background_color: str | None = None
    title_color: str | None = None
    body_color: str | None = None


def check_device(platform: str, token: str, app_version: str | None) -> None:
    if platform not in PLATFORMS:
        raise bad_request("bad_param.platform", "platform must be apns or fcm", param="platform")
    pattern = APNS_TOKEN if platform == "apns" else FCM_TOKEN
    if not pattern.match(token):
        what = "hexadecimal" if platform == "apns" else "an FCM registration token"
        raise bad_request(
            "bad_param.token", f"token is not a valid {platform} device token ({what})", param="token"
        )
    if app_version is not None and len(app_version) > 64:
        raise bad_request(
            "bad_param.app_version", "app_version is at most 64 characters", param="app_version"
        )


def check_url(value: str | None, param: str, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise bad_request("missing_param", f"{param} is required", param=param)
        return
    if len(value) > MAX_URL or not re.match(r"^https?://[^\s/]+\S*$", value):
        raise bad_request(
            "bad_param.url", f"{param} must be an http(s) URL of at most {MAX_URL} characters", param=param
        )


def check_feed_item(req: FeedItemRequest) -> None:
    if req.type != "basic":
        raise bad_request("bad_param.type", "type must be basic", param="type")
    if not req.title.strip() or len(req.title) > MAX_TITLE:
        raise bad_request(
            "bad_param.title", f"params[title] must be 1 to {MAX_TITLE} characters", param="params[title]"
        )
    if req.body is not None and len(req.body) > MAX_BODY:
        raise bad_request(
            "bad_param.body", f"params[body] is at most {MAX_BODY} characters", param="params[body]"
        )
    check_url(req.image_url, "params[image_url]", required=True)
    check_url(req.url, "url")
    for name in ("background_color", "title_color", "body_color"):
        value = getattr(req, name)
        if value is not None and not COLOUR.match(value):
            raise bad_request(
                "bad_param.colour",
                f"params[{name}] must be a hex colour like #FCF1EE",
                param=f"params[{name}]",
            )


class NotificationService:
    def __init__(
        self, db: Database, accounts: AccountsClient, sender: Sender, settings: NotificationsSettings
    ) -> None:
        self.db = db
        self.accounts = accounts
        self.sender = sender
        self.settings = settings

    # -- devices ---------------------------------------------------------------------------------------

    async def register_device(
        self, user_id: str, platform: str, token: str, app_version: str | None
    ) -> tuple[Device, bool]:
        check_device(platform, token, app_version)
        async with self.db.transaction() as session:
            if await repository.count_active_devices(session, user_id) >= self.settings.max_devices_per_user:
                existing = [d for d in await repository.devices_of(session, user_id) if d.token == token]
                if not existing:
                    raise BankError(
                        "conflict.too_many_devices",
                        f"at most {self.settings.max_devices_per_user} devices; remove one first",
                    )
            return await repository.register_device(session, user_id, platform, token, app_version)

    async def devices(self, user_id: str) -> list[Device]:
        async with self.db.read() as session:
            return await repository.devices_of(session, user_id)

    async def delete_device(self, user_id: str, device_id: str) -> None:
        async with self.db.transaction() as session:
            device = await repository.get_device(session, device_id)
            if device is None or device.user_id != user_id:
                raise not_found("device", "no device with that id")
            await repository.delete_device(session, device)

    # -- the feed --------------------------------------------------------------------------------------

    async def _owner(self, user_id: str, account_id: str) -> bool:
        """Check `user_id` owns the account; True if the owner had to be asked of accounts."""
        if not account_id:
            raise bad_request("missing_param", "account_id is required", param="account_id")
        async with self.db.read() as session:
            owner = await repository.owner_of(session, account_id)
        asked = owner is None
        if owner is None:
            owner = await self.accounts.owner(account_id)
            if owner is None:
                raise not_found("account", "no account with that id")
        if owner != user_id:
            raise forbidden("insufficient_permissions", "that account does not belong to you")
        return asked

    async def create_feed_item(self, user_id: str, client_id: str, req: FeedItemRequest) -> FeedItem:
        check_feed_item(req)
        asked = await self._owner(user_id, req.account_id)
        async with self.db.transaction() as session:
            if asked:
                await repository.remember_owner(session, req.account_id, user_id)
            item = await repository.add_feed_item(
                session,
                account_id=req.account_id,
                user_id=user_id,
                type=req.type,
                title=req.title,
                body=req.body,
                image_url=req.image_url,
                url=req.url,
                background_color=req.background_color,
                title_color=req.title_color,
                body_color=req.body_color,
                source="api",
                client_id=client_id or None,
            )
            assert item is not None
            data = {"feed_item_id": item.id, "account_id": req.account_id}
            if req.url:
                data["url"] = req.url
            message = Message("feed_item", req.title, req.body or "", data)
            queued = await repository.enqueue(
                session, f"feed_item:{item.id}", user_id, req.account_id, message
            )
            if queued:
                NOTIFICATIONS_QUEUED.labels("feed_item").inc(queued)
                after_commit(session, self.sender.wake)
        return item

    async def feed(self, user_id: str, account_id: str) -> list[FeedItem]:
        await self._owner(user_id, account_id)
        async with self.db.read() as session:
            return await repository.feed_of(session, account_id, self.settings.feed_page_size)
