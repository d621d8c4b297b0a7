"""The one interface both transports (Kafka, the Postgres log) implement.

A transport moves opaque records: (topic, key, value bytes). Publishing
returns only when the records are durable (Kafka: acks=all; pglog:
committed). A subscription hands out records in per-partition order and
commits a position only when told to, after the consumer's own transaction
has committed: that is what makes delivery at-least-once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.health import Checker


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes


class Subscription(Protocol):
    async def poll(self, max_records: int = 500, timeout: float = 0.5) -> list[IncomingRecord]:
        """Return the next records (possibly none after `timeout` seconds)."""
        ...

    async def commit(self, records: list[IncomingRecord]) -> None:
        """Mark these records (and everything before them in their partitions) as done."""
        ...

    async def lag(self) -> dict[str, int]:
        """Records not yet committed, per topic."""
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    name: str

    async def start(self) -> None: ...

    async def publish(self, records: list[OutgoingRecord]) -> None:
        """Durably append the records, in order; raise if that cannot be confirmed."""
        ...

    async def subscribe(self, group: str, topics: list[str]) -> Subscription: ...

    def checker(self) -> Checker: ...

    async def close(self) -> None: ...
