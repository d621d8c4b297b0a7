"""What a service process is made of: settings, its database, its event transport, relay and consumers.

A service's `app.py` builds a Runtime and asks it for the FastAPI app; the
runtime wires health checkers, the outbox relay and the consumers into the
app's lifespan, so each service file only says what is specific to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI

from shared.config import BACKGROUND_SERVICES, CONSUMER_BATCH, BankSettings, load
from shared.db import Database
from shared.events import make_transport
from shared.events.consumer import BatchHandler, Consumer, Handler
from shared.events.outbox import Outbox
from shared.events.relay import Relay
from shared.health import Checker
from shared.observability import configure_logging
from shared.priority import yield_cpu
from shared.web import Background, Hook, create_app

log = logging.getLogger("shared.runtime")


class Runtime:
    def __init__(self, service: str, settings: BankSettings | None = None) -> None:
        self.service = service
        self.settings = settings or load(BankSettings)
        background = background_service(service, self.settings)
        self.db = Database(
            self.settings.async_database_url,
            pool_size=self.settings.db_pool_size,
            application_name=service,
            background=background,
        )
        self.transport = make_transport(self.settings, client_id=service, background=background)
        self.outbox = Outbox(service)
        self.relay = Relay(
            self.db,
            self.outbox,
            self.transport,
            batch_size=self.settings.relay_batch,
            poll_seconds=self.settings.relay_poll_seconds,
            linger_seconds=self.settings.relay_linger_ms / 1000,
        )
        self.consumers: list[Consumer] = []

    def consumer(
        self,
        name: str,
        topics: Iterable[str],
        handlers: dict[str, Handler],
        *,
        batch_handler: BatchHandler | None = None,
        batch_size: int = CONSUMER_BATCH,
    ) -> Consumer:
        """Register a consumer group (`<service>.<purpose>`) that runs for the life of the app."""
        consumer = Consumer(
            f"{self.service}.{name}",
            service=self.service,
            db=self.db,
            transport=self.transport,
            handlers=handlers,
            topics=topics,
            batch_handler=batch_handler,
            batch_size=batch_size,
            linger_seconds=self.settings.consumer_linger_ms / 1000,
        )
        self.consumers.append(consumer)
        return consumer

    async def _shutdown(self) -> None:
        await self.transport.close()
        await self.db.dispose()

    def app(
        self,
        *,
        routers: Iterable[APIRouter] = (),
        checkers: dict[str, Checker] | None = None,
        background: Iterable[Background] = (),
        on_startup: Iterable[Hook] = (),
        on_shutdown: Iterable[Hook] = (),
        **fastapi_kwargs: Any,
    ) -> FastAPI:
        all_checkers: dict[str, Checker] = {
            "database": self.db.checker(),
            "transport": self.transport.checker(),
            **(checkers or {}),
        }
        jobs: list[Background] = [self.relay.run, *(c.run for c in self.consumers), *background]
        return create_app(
            self.service,
            routers=routers,
            checkers=all_checkers,
            background=jobs,
            on_startup=[self.transport.start, *on_startup],
            on_shutdown=[*on_shutdown, self._shutdown],
            **fastapi_kwargs,
        )


def background_service(service: str, settings: BankSettings) -> bool:
    """Whether `service` yields the CPU to the card path (decision 0047)."""
    return service in BACKGROUND_SERVICES and settings.background_priority == "idle"


def serve(service: str, factory: str) -> None:
    """Run one service as its own process: `python -m services.<name>`."""
    settings = load(BankSettings)
    configure_logging(service, settings.log_level, settings.log_json)
    if background_service(service, settings):
        yield_cpu()
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port_of(service),
        log_config=None,
        access_log=False,
        lifespan="on",
    )
