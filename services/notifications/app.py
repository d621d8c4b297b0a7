import logging

from fastapi import FastAPI

from services.notifications.accounts_client import AccountsClient
from services.notifications.api import public_router
from services.notifications.config import NotificationsSettings
from services.notifications.consumers import TRANSACTIONS_TOPIC, WEBHOOKS_TOPIC, Handlers
from services.notifications.providers import Provider
from services.notifications.providers.apns import ApnsProvider, ProviderToken
from services.notifications.providers.fcm import (
    FcmProvider,
    ServiceAccountToken,
    TokenSource,
    generate_dev_private_key,
)
from services.notifications.sender import Sender
from services.notifications.service import NotificationService
from shared.config import load
from shared.remote_auth import accounts_token_verifier
from shared.runtime import Runtime

log = logging.getLogger("services.notifications")


def build_providers(
    settings: NotificationsSettings, fcm_tokens: TokenSource | None = None
) -> dict[str, Provider]:
    timeout = settings.provider_timeout_seconds
    apns = ApnsProvider(
        settings.apns_url,
        settings.apns_topic,
        ProviderToken(
            settings.apns_team_id,
            settings.apns_key_id,
            settings.apns_key_pem(),
            refresh_seconds=settings.apns_token_refresh_seconds,
        ),
        timeout=timeout,
        expiration_seconds=settings.apns_expiration_seconds,
    )
    if fcm_tokens is None:
        if settings.fcm_service_account_file:
            fcm_tokens = ServiceAccountToken.from_file(
                settings.fcm_service_account_file, default_token_uri=settings.fcm_token_uri, timeout=timeout
            )
        else:
            fcm_tokens = ServiceAccountToken(
                settings.fcm_client_email,
                settings.fcm_private_key.strip() or generate_dev_private_key(),
                settings.fcm_token_uri,
                timeout=timeout,
            )
    fcm = FcmProvider(
        settings.fcm_url,
        settings.fcm_project_id,
        fcm_tokens,
        timeout=timeout,
        ttl_seconds=settings.fcm_ttl_seconds,
    )
    return {"apns": apns, "fcm": fcm}


def create_app(runtime: Runtime | None = None, settings: NotificationsSettings | None = None) -> FastAPI:
    runtime = runtime or Runtime("notifications")
    settings = settings or load(NotificationsSettings)
    accounts_url = runtime.settings.url_of("accounts")
    providers = build_providers(settings)
    sender = Sender(runtime.db, providers, settings)
    handlers = Handlers(sender)
    runtime.consumer(
        "push", [TRANSACTIONS_TOPIC, WEBHOOKS_TOPIC], handlers.handlers(), batch_handler=handlers.on_batch
    )
    accounts = AccountsClient(
        accounts_url, runtime.settings.internal_token, timeout=settings.accounts_timeout_seconds
    )
    service = NotificationService(runtime.db, accounts, sender, settings)
    verifier, revocations, token_client = accounts_token_verifier(
        accounts_url,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
        poll_seconds=settings.revocation_poll_seconds,
    )

    async def warn_about_dev_credentials() -> None:
        if dev := settings.dev_credentials_in_use():
            log.warning(
                "development push credentials in use (real APNs/FCM refuse them; set them in production): %s",
                ", ".join(dev),
            )

    async def close_clients() -> None:
        for provider in providers.values():
            await provider.aclose()
        await accounts.aclose()
        await token_client.aclose()

    app = runtime.app(
        routers=[public_router(service)],
        background=[sender.run, revocations.run],
        on_startup=[warn_about_dev_credentials],
        on_shutdown=[close_clients],
    )
    app.state.token_verifier = verifier
    app.state.internal_token = runtime.settings.internal_token
    app.state.sender = sender
    return app
