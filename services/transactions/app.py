from fastapi import FastAPI

from services.transactions import observability  # noqa: F401  (registers the feed metrics)
from services.transactions.api import public_router
from services.transactions.config import TransactionsSettings
from services.transactions.consumers import TOPICS, FeedProjector
from services.transactions.publish import Announcer
from shared.config import load
from shared.remote_auth import accounts_token_verifier
from shared.runtime import Runtime


def create_app(runtime: Runtime | None = None, settings: TransactionsSettings | None = None) -> FastAPI:
    runtime = runtime or Runtime("transactions")
    settings = settings or load(TransactionsSettings)
    announcer = Announcer(runtime.outbox)
    projector = FeedProjector(announcer, settings.logo_base_url)
    runtime.consumer(
        "feed", TOPICS, projector.handlers(), batch_handler=projector.on_batch,
        batch_size=settings.consumer_batch,
    )  # fmt: skip
    verifier, revocations, token_client = accounts_token_verifier(
        runtime.settings.url_of("accounts"),
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
        poll_seconds=settings.revocation_poll_seconds,
    )

    async def close_clients() -> None:
        await token_client.aclose()

    app = runtime.app(
        routers=[public_router(runtime.db, announcer, settings)],
        background=[revocations.run],
        on_shutdown=[close_clients],
    )
    app.state.token_verifier = verifier
    return app
