import logging

from fastapi import FastAPI

from services.webhooks.accounts_client import AccountsClient
from services.webhooks.api import public_router
from services.webhooks.config import WebhooksSettings, decode_key
from services.webhooks.consumers import DeliveryHandlers
from services.webhooks.delivery import Deliverer
from services.webhooks.events import FEED_TOPIC
from services.webhooks.service import WebhookService
from services.webhooks.signing import SecretBox
from shared.config import load
from shared.remote_auth import accounts_token_verifier
from shared.runtime import Runtime

log = logging.getLogger("services.webhooks")


def create_app(runtime: Runtime | None = None, settings: WebhooksSettings | None = None) -> FastAPI:
    runtime = runtime or Runtime("webhooks")
    settings = settings or load(WebhooksSettings)
    accounts_url = runtime.settings.url_of("accounts")
    box = SecretBox(decode_key(settings.secret_key))
    deliverer = Deliverer(runtime.db, runtime.outbox, box, settings)
    deliveries = DeliveryHandlers(deliverer)
    runtime.consumer("deliveries", [FEED_TOPIC], deliveries.handlers(), batch_handler=deliveries.on_batch)
    accounts = AccountsClient(accounts_url, runtime.settings.internal_token)
    webhooks = WebhookService(runtime.db, accounts, box, deliverer, settings)
    verifier, revocations, token_client = accounts_token_verifier(
        accounts_url,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
        poll_seconds=settings.revocation_poll_seconds,
    )

    async def warn_about_dev_settings() -> None:
        if settings.dev_key_in_use():
            log.warning("development key in use (set it in production): WEBHOOKS_SECRET_KEY")
        if settings.allow_http or settings.allow_networks:
            log.warning(
                "receivers admitted that production refuses: allow_http=%s allow_networks=%s",
                settings.allow_http,
                settings.allow_networks,
            )

    async def close_clients() -> None:
        await deliverer.aclose()
        await accounts.aclose()
        await token_client.aclose()

    app = runtime.app(
        routers=[public_router(webhooks)],
        background=[deliverer.run, deliverer.record, revocations.run],
        on_startup=[warn_about_dev_settings],
        on_shutdown=[close_clients],
    )
    app.state.token_verifier = verifier
    app.state.deliverer = deliverer
    return app
