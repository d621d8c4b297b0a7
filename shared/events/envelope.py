"""The event envelope: CloudEvents 1.0, structured JSON mode.

`subject` is the account id. It is also the transport's message key, so every
event of one account lands in one partition and keeps its order.

Event payloads (`data`) are pydantic models that subclass EventData and name
their CloudEvents `type` and schema version; consumers parse `data` back into
the model they expect with `envelope.data_as(Model)`.
"""

from __future__ import annotations

import builtins
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.context import TraceContext, current_traceparent

SPEC_VERSION = "1.0"


class EventData(BaseModel):
    """Base for versioned event payloads. Subclasses set `event_type` and `version`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    event_type: ClassVar[str]
    version: ClassVar[int] = 1


D = TypeVar("D", bound=EventData)


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True)

    specversion: str = SPEC_VERSION
    id: str
    source: str
    type: str
    time: datetime
    subject: str
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    traceparent: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def wrap(
        cls,
        source: str,
        subject: str,
        data: EventData,
        *,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> Envelope:
        """`traceparent`: the trace the event belongs to; by default the one the caller runs in."""
        return cls(
            id=event_id or str(uuid.uuid4()),
            source=f"/services/{source}",
            type=data.event_type,
            time=datetime.now(UTC),
            subject=subject,
            dataschema=f"urn:bank:event:{data.event_type}:v{data.version}",
            traceparent=traceparent or current_traceparent(),
            data=data.model_dump(mode="json"),
        )

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        """Parse and validate (in one pass, pydantic's own JSON parser: every consumer runs this for
        every event); raises ValueError on anything that is not a CloudEvent of ours."""
        envelope = cls.model_validate_json(raw)  # its ValidationError is a ValueError
        if envelope.specversion != SPEC_VERSION or not envelope.model_fields_set >= {"specversion"}:
            raise ValueError("not a CloudEvents 1.0 structured event")
        return envelope

    def trace_context(self) -> TraceContext | None:
        """The trace the event was emitted in: its handlers continue it."""
        return TraceContext.parse(self.traceparent)

    def data_as(self, model: builtins.type[D]) -> D:
        return model.model_validate(self.data)
