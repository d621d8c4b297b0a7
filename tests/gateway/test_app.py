"""The production factory (built, not started): the pipeline, and no database or transport to wait on."""

from __future__ import annotations

from services.gateway.app import create_app
from services.gateway.edge import AccessLog, EdgeRouter
from shared.config import BankSettings
from shared.web import RequestContextMiddleware


def test_production_factory_wires_the_pipeline_in_order() -> None:
    app = create_app(BankSettings())
    assert [m.cls for m in app.user_middleware] == [AccessLog, RequestContextMiddleware, EdgeRouter]
    assert set(app.state.checkers) == {"identity"}  # the gateway keeps no state: no database, no transport
    gateway = app.state.gateway
    assert set(gateway.clients) == {"accounts", "cards", "transactions", "webhooks", "notifications"}
    assert app.openapi_url is None and app.docs_url is None  # the merged document replaces FastAPI's
    assert "/ops/health" in app.openapi()["paths"]  # the gateway's own part of the merged document
