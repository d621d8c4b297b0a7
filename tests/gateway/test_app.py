"""The production factory wires the same gateway onto the service Runtime (built, not started)."""

from __future__ import annotations

from services.gateway.app import create_app
from services.gateway.edge import AccessLog, EdgeRouter
from shared.config import BankSettings
from shared.runtime import Runtime
from shared.web import RequestContextMiddleware


def test_production_factory_wires_the_pipeline_in_order() -> None:
    app = create_app(Runtime("gateway", BankSettings()))
    assert [m.cls for m in app.user_middleware] == [AccessLog, RequestContextMiddleware, EdgeRouter]
    assert {"identity", "database", "transport"} <= set(app.state.checkers)
    gateway = app.state.gateway
    assert set(gateway.clients) == {"accounts", "cards", "transactions", "webhooks", "notifications"}
    assert app.openapi_url is None and app.docs_url is None  # the merged document replaces FastAPI's
    assert "/ops/health" in app.openapi()["paths"]  # the gateway's own part of the merged document
