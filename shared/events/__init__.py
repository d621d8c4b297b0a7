"""The event backbone: envelope, outbox, relay, consumer runner and the two transports."""

from __future__ import annotations

from shared.config import BankSettings
from shared.events.transports.base import Transport


def make_transport(settings: BankSettings, client_id: str, *, background: bool = False) -> Transport:
    """Kafka when configured, else the embedded Postgres log (the zero-dependency default)."""
    if settings.transport == "kafka":
        from shared.events.transports.kafka import KafkaTransport

        return KafkaTransport(settings.kafka_bootstrap, client_id=client_id)
    from shared.events.transports.pglog import PgLogTransport

    return PgLogTransport(
        settings.database_url, application_name=f"{client_id}.events", background=background
    )
