from fastapi import FastAPI

from services.transactions import observability  # noqa: F401  (registers the feed metrics)
from services.transactions.api import attachments_router, public_router
from services.transactions.config import TransactionsSettings
from services.transactions.consumers import TOPICS, FeedProjector
from services.transactions.publish import Announcer
from services.transactions.schemas import ReceiptIn
from services.transactions.service import Annotations
from services.transactions.storage import open_store
from shared.config import load
from shared.remote_auth import accounts_token_verifier
from shared.runtime import Runtime
from shared.web import document_models


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

    public_url = settings.storage_public_url or runtime.settings.gateway_url
    store = open_store(settings, runtime.settings.data_dir, public_url)
    annotations = Annotations(announcer, store, public_url)
    app = runtime.app(
        routers=[
            public_router(runtime.db, annotations, settings),
            attachments_router(runtime.db, annotations),
        ],
        background=[revocations.run],
        on_shutdown=[close_clients, store.aclose],
    )
    document_models(app, ReceiptIn)
    app.state.token_verifier = verifier
    return app
