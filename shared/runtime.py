"""What a service process is made of: settings, its database, its event transport and relay.

A service's `app.py` builds a Runtime and asks it for the FastAPI app; the
runtime wires health checkers, the outbox relay and the consumers into the
app's lifespan, so each service file only says what is specific to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import uvicorn
from fastapi import APIRouter, FastAPI

from shared.config import BankSettings, load
from shared.db import Database
from shared.health import Checker
from shared.observability import configure_logging
from shared.web import Background, create_app

log = logging.getLogger("shared.runtime")


class Runtime:
    def __init__(self, service: str, settings: BankSettings | None = None) -> None:
        self.service = service
        self.settings = settings or load(BankSettings)
        self.db = Database(
            self.settings.async_database_url,
            pool_size=self.settings.db_pool_size,
            application_name=service,
        )

    def app(
        self,
        *,
        routers: Iterable[APIRouter] = (),
        checkers: dict[str, Checker] | None = None,
        background: Iterable[Background] = (),
        **fastapi_kwargs: object,
    ) -> FastAPI:
        all_checkers: dict[str, Checker] = {"database": self.db.checker(), **(checkers or {})}
        return create_app(
            self.service,
            routers=routers,
            checkers=all_checkers,
            background=list(background),
            on_shutdown=[self.db.dispose],
            **fastapi_kwargs,
        )


def serve(service: str, factory: str) -> None:
    """Run one service as its own process: `python -m services.<name>`."""
    settings = load(BankSettings)
    configure_logging(service, settings.log_level, settings.log_json)
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port_of(service),
        log_config=None,
        access_log=False,
        lifespan="on",
    )
