"""Per-request context carried across calls and events: W3C trace context and the deadline.

Everything here lives in contextvars, so it follows an asyncio task and its
children without being passed by hand.
"""

from __future__ import annotations

import re
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass

TRACEPARENT_HEADER = "traceparent"
# Remaining time budget in milliseconds, as seen by the caller when it sent the request.
# Relative rather than absolute so that clock skew between hosts does not matter.
DEADLINE_HEADER = "x-deadline-ms"

_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    flags: str = "01"

    @classmethod
    def new(cls) -> TraceContext:
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    @classmethod
    def parse(cls, header: str | None) -> TraceContext | None:
        if not header:
            return None
        m = _TRACEPARENT_RE.match(header.strip().lower())
        if not m or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
            return None
        return cls(m.group(1), m.group(2), m.group(3))

    def child(self) -> TraceContext:
        return TraceContext(self.trace_id, secrets.token_hex(8), self.flags)

    @property
    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


_trace: ContextVar[TraceContext | None] = ContextVar("trace", default=None)
_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)  # time.monotonic() value


def current_trace() -> TraceContext | None:
    return _trace.get()


def current_traceparent() -> str | None:
    t = _trace.get()
    return t.header if t else None


def set_trace(trace: TraceContext | None) -> None:
    _trace.set(trace)


def current_deadline() -> float | None:
    """The monotonic time by which the current request must be answered, if any."""
    return _deadline.get()


def set_deadline(deadline: float | None) -> None:
    _deadline.set(deadline)


def remaining_seconds() -> float | None:
    d = _deadline.get()
    return None if d is None else d - time.monotonic()


def deadline_from_header(value: str | None) -> float | None:
    if not value:
        return None
    try:
        ms = int(value)
    except ValueError:
        return None
    return time.monotonic() + max(ms, 0) / 1000.0
