from fastapi import FastAPI

from services.accounts import schemas
from services.accounts.api import internal_router, pots_router, public_router
from services.accounts.cards_client import CardsClient
from services.accounts.config import AccountsSettings
from services.accounts.identity import IdentityService, identity_routers
from services.accounts.jobs import hold_expiry_job, unconfirmed_holds_job
from services.accounts.observability import gauges_job
from services.accounts.service import LedgerService
from shared.config import load
from shared.runtime import Runtime
from shared.web import document_models


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime("accounts")
    settings = load(AccountsSettings)
    ledger = LedgerService(runtime.outbox, settings)
    identity = IdentityService(runtime.db, ledger, settings)
    cards = CardsClient(runtime.settings.url_of("cards"), runtime.settings.internal_token)
    app = runtime.app(
        routers=[
            *identity_routers(identity),
            public_router(runtime.db, ledger),
            pots_router(runtime.db, ledger),
            internal_router(runtime.db, ledger),
        ],
        on_startup=[identity.start],
        on_shutdown=[cards.aclose],
        background=[
            identity.housekeeping,
            hold_expiry_job(runtime.db, ledger, settings.expiry_job_seconds),
            unconfirmed_holds_job(
                runtime.db, ledger, cards, settings.unconfirmed_job_seconds, settings.unconfirmed_hold_seconds
            ),
            gauges_job(runtime.db),
        ],
        direct_routes=[("POST", "/internal/holds/batch"), ("POST", "/internal/holds")],
    )
    document_models(app, schemas.PlaceHold, schemas.PlaceHolds)
    app.state.token_verifier = identity.verifier()
    app.state.internal_token = runtime.settings.internal_token
    return app
