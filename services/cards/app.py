import logging

from fastapi import FastAPI

from services.cards.accounts_client import AccountsClient
from services.cards.advices import Advices
from services.cards.api import internal_router, public_router
from services.cards.authorise import Authoriser
from services.cards.clearing import Clearing
from services.cards.compensation import compensation_job
from services.cards.config import CardsSettings, decode_key
from services.cards.iso8583.link import LinkServer, Services, link_settings
from services.cards.network_api import document_messages, network_router
from services.cards.observability import gauges_job
from services.cards.reversals import Reverser
from services.cards.service import CardService
from services.cards.vault import Vault
from shared.config import load
from shared.remote_auth import accounts_token_verifier
from shared.runtime import Runtime

log = logging.getLogger("services.cards")


def create_app(runtime: Runtime | None = None, settings: CardsSettings | None = None) -> FastAPI:
    runtime = runtime or Runtime("cards")
    settings = settings or load(CardsSettings)
    accounts_url = runtime.settings.url_of("accounts")
    vault = Vault(
        decode_key(settings.encryption_key),
        decode_key(settings.fingerprint_key),
        decode_key(settings.cvc_key),
    )
    accounts = AccountsClient(accounts_url, runtime.settings.internal_token, settings)
    cards = CardService(runtime.db, vault, accounts, settings)
    authoriser = Authoriser(runtime.db, runtime.outbox, vault, accounts, settings)
    advices = Advices(runtime.db, runtime.outbox, vault, accounts)
    reverser = Reverser(
        runtime.db, runtime.outbox, accounts, rehold_in_doubt_seconds=settings.rehold_in_doubt_seconds
    )
    clearing = Clearing(runtime.db, runtime.outbox, vault, accounts, settings)
    verifier, revocations, token_client = accounts_token_verifier(
        accounts_url,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
        poll_seconds=settings.revocation_poll_seconds,
    )

    # The card network's ISO 8583 link: another codec onto the same three services (decision 0032).
    link = LinkServer(
        Services(authoriser.authorise, advices.advise, reverser.reverse),
        link_settings(
            settings.iso8583_host or runtime.settings.host, settings.iso8583_port, settings.network_api_key,
            settings.iso8583_allow_networks, sign_on_seconds=settings.iso8583_sign_on_seconds,
            idle_seconds=settings.iso8583_idle_seconds, max_in_flight=settings.iso8583_max_in_flight,
        ),
    )  # fmt: skip

    async def warn_about_dev_keys() -> None:
        if dev := settings.dev_keys_in_use():
            log.warning("development keys in use (set them in production): %s", ", ".join(dev))

    async def close_clients() -> None:
        await authoriser.aclose()
        await accounts.aclose()
        await token_client.aclose()

    app = runtime.app(
        routers=[
            public_router(cards),
            network_router(authoriser, advices, reverser, clearing),
            internal_router(runtime.db),
        ],
        background=[
            compensation_job(runtime.db, accounts, settings),
            revocations.run,
            gauges_job(runtime.db),
            *([link.run] if settings.iso8583_enabled else []),
        ],
        checkers={"iso8583_link": link.checker} if settings.iso8583_enabled else None,
        on_startup=[warn_about_dev_keys],
        on_shutdown=[close_clients],
        direct_routes=[("POST", "/network/authorisations")],
    )
    document_messages(app)
    app.state.token_verifier = verifier
    app.state.internal_token = runtime.settings.internal_token
    app.state.network_api_key = settings.network_api_key
    app.state.iso8583_link = link
    return app
