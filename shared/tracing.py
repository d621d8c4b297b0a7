"""Distributed tracing: OpenTelemetry spans on top of `shared.context`'s W3C trace context.

`shared.context.TraceContext` stays the one thing propagated: in a contextvar within a process, in
the `traceparent` header between processes, and in the CloudEvent's `traceparent` across the event
log. This module records spans for it: a span starts with the current TraceContext as its parent,
and while it runs the current TraceContext is the span's own (same trace id, the span's id, the
sampled flag), so logs, outgoing calls and emitted events carry it. A span is a small record of our
own (`Span`), not an OpenTelemetry SDK span: those cost about 60 µs each here, and a card
authorisation makes a dozen (decision 0023). The SDK is used only to export, when an OTLP endpoint
is set.

Spans are recorded where work crosses a boundary: HTTP server (shared.web) and client
(shared.http), the database transaction at the edge (shared.db), outbox emit, relay publish and
consumer handle (shared.events). Finished spans go to

* an in-memory ring per process (`RING`, served at `/internal/spans`; the gateway's /ops page reads
  it), unless `BANK_TRACE_RING_SIZE=0`;
* OTLP/HTTP (Jaeger, Tempo, any collector) when `BANK_OTLP_ENDPOINT` is set, exported in batches
  by the SDK's background thread.

Sampling is head-based and decided once per trace where it starts (`BANK_TRACE_SAMPLE_RATIO`),
then followed by every service through the traceparent's sampled flag. `BANK_TRACING=false` turns
all of it off: the code paths are then exactly the ones before tracing existed.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections import deque
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, NamedTuple

from fastapi import APIRouter, Query, Request
from opentelemetry.trace import SpanKind
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import context
from shared.context import TraceContext
from shared.errors import BankError
from shared.observability import RECENT_DEAD_LETTERS

__all__ = ["RING", "SpanKind", "TracingSettings", "configure", "enabled"]

SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = (
    SpanKind.SERVER,
    SpanKind.CLIENT,
    SpanKind.PRODUCER,
    SpanKind.CONSUMER,
    SpanKind.INTERNAL,
)
# Event fields worth finding a trace by (the ops page's "transaction id" search).
ID_FIELDS = (
    "id",
    "transaction_id",
    "network_transaction_id",
    "authorisation_id",
    "hold_id",
    "card_id",
    "account_id",
    "webhook_id",
    "device_id",
)
_TRACEPARENT_IN_JSON = re.compile(r'"traceparent":"(00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})"')
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class TracingSettings(BaseSettings):
    """`BANK_TRACING`, `BANK_TRACE_SAMPLE_RATIO`, `BANK_OTLP_ENDPOINT`, `BANK_TRACE_RING_SIZE`."""

    model_config = SettingsConfigDict(env_prefix="BANK_", extra="ignore")

    tracing: bool = True
    # Fraction of new traces recorded (decided where a trace starts; every service follows it).
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # OTLP/HTTP collector base URL, e.g. http://tempo:4318 (spans go to <endpoint>/v1/traces).
    otlp_endpoint: str | None = None
    # Finished spans kept in memory per process for the ops page; 0 keeps none.
    trace_ring_size: int = Field(default=20_000, ge=0)


class StoredSpan(NamedTuple):
    """A finished span as the ring keeps it: a plain tuple of atomic values (`StoredSpan.of`), read
    back through these names. The garbage collector stops tracking exact tuples of atomic values
    (after a few collection passes), so 20,000 of them cost its full collections nothing, where
    OpenTelemetry's span objects (a dozen containers each) made every full collection walk
    hundreds of thousands of objects."""

    trace_id: str  # hex, as in the traceparent
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: tuple[tuple[str, Any], ...]


class SpanRing:
    """The embedded span store: the last N finished spans of this process, newest last.

    The hot path's cost is one small tuple and a deque append; turning spans into JSON happens
    only when someone asks (`/internal/spans`).
    """

    def __init__(self, size: int) -> None:
        self.spans: deque[tuple[Any, ...]] = deque(maxlen=max(size, 1))
        self.size = size

    def resize(self, size: int) -> None:
        if size != self.size:
            self.spans = deque(self.spans, maxlen=max(size, 1))
            self.size = size

    def clear(self) -> None:
        self.spans.clear()

    def find(
        self, *, trace_id: str | None = None, search: str | None = None, limit: int = 2000
    ) -> list[dict[str, Any]]:
        """Spans of one trace, or of every trace that has a span with an attribute equal to (or, for
        8+ characters, containing) `search`."""
        spans = [StoredSpan._make(t) for t in self.spans]
        traces: set[str] = set()
        if trace_id:
            traces.add(trace_id.lower())
        if search:
            for s in spans:
                if s.attributes and _matches(s.attributes, search):
                    traces.add(s.trace_id)
        found = [span_json(s) for s in spans if s.trace_id in traces]
        return found[-limit:]

    def recent(self, name_contains: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest finished spans whose name (or url.path) contains `name_contains`."""
        out: list[dict[str, Any]] = []
        for t in reversed(self.spans):
            s = StoredSpan._make(t)
            path = dict(s.attributes).get("url.path", "")
            if name_contains in s.name or (isinstance(path, str) and name_contains in path):
                out.append(span_json(s))
                if len(out) >= limit:
                    break
        return out


def _matches(attributes: tuple[tuple[str, Any], ...], search: str) -> bool:
    for _, value in attributes:
        if value == search or (len(search) >= 8 and isinstance(value, str) and search in value):
            return True
    return False


def span_json(s: StoredSpan) -> dict[str, Any]:
    return {
        "trace_id": s.trace_id,
        "span_id": s.span_id,
        "parent_id": s.parent_id,
        "name": s.name,
        "service": s.service,
        "kind": s.kind,
        "start_us": s.start_ns // 1000,
        "end_us": s.end_ns // 1000,
        "status": s.status,
        "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in s.attributes},
    }


RING = SpanRing(20_000)
_LOW_64_BITS = 2**64
_state: dict[str, Any] = {"enabled": False, "settings": None, "sample_below": _LOW_64_BITS}
_recording: ContextVar[Span | None] = ContextVar("recording_span", default=None)
_service: ContextVar[str | None] = ContextVar("trace_service", default=None)
_default_service = ["bank"]


class Span:
    """A sampled span while it runs. Unsampled spans get a trace context but no `Span`."""

    __slots__ = (
        "attributes", "kind", "name", "parent_id", "service", "span_id", "start_ns", "status", "trace_id",
    )  # fmt: skip

    def __init__(
        self, trace: TraceContext, parent_id: str | None, name: str, service: str, kind: SpanKind,
        attributes: Mapping[str, Any] | None, start_ns: int,
    ) -> None:  # fmt: skip
        self.trace_id = trace.trace_id
        self.span_id = trace.span_id
        self.parent_id = parent_id
        self.name = name
        self.service = service
        self.kind = kind
        self.attributes: dict[str, Any] = {}
        if attributes:
            self.attributes.update((k, v) for k, v in attributes.items() if v is not None)
        self.start_ns = start_ns
        self.status = "unset"

    def finish(self, end_ns: int) -> None:
        stored = (
            self.trace_id, self.span_id, self.parent_id, self.name, self.service, self.kind.name.lower(),
            self.start_ns, end_ns, self.status,
            tuple((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in self.attributes.items()),
        )  # fmt: skip
        if RING.size > 0:
            RING.spans.append(stored)
        exporter = _state.get("exporter")
        if exporter is not None:
            exporter.export(StoredSpan._make(stored), self.kind)


def configure(service: str, settings: TracingSettings | None = None) -> bool:
    """Turn tracing on (or off) for this process, whose spans are reported as `service` by default.
    Safe to call again (tests build several services in one process). Returns whether it is on."""
    settings = settings or TracingSettings()
    previous: TracingSettings | None = _state["settings"]
    if previous is None or previous.otlp_endpoint != settings.otlp_endpoint:
        if (replaced := _state.get("exporter")) is not None:
            replaced.close()
        _state["exporter"] = None
        if settings.otlp_endpoint:
            from shared.otlp import OtlpExporter

            _state["exporter"] = OtlpExporter(settings.otlp_endpoint)
    _state["settings"] = settings
    _state["enabled"] = settings.tracing
    # OpenTelemetry's TraceIdRatioBased rule: sampled when the trace id's low 64 bits are below this.
    _state["sample_below"] = round(settings.trace_sample_ratio * _LOW_64_BITS)
    _default_service[0] = service
    RING.resize(settings.trace_ring_size)
    return settings.tracing


def configured() -> bool:
    return _state["settings"] is not None


def enabled() -> bool:
    return bool(_state["enabled"])


def shutdown() -> None:
    """Flush the OTLP exporter's batches at process exit; the ring needs nothing."""
    exporter = _state.get("exporter")
    if exporter is not None:
        exporter.flush()


class Active:
    """A started span that is the current trace context until `end()` (or the `with` block) ends it."""

    __slots__ = ("_prev_span", "_prev_trace", "span", "trace")

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        parent: TraceContext | None,
        service: str | None,
        attributes: Mapping[str, Any] | None,
    ) -> None:
        span_id = secrets.token_hex(8)
        if parent is None:  # a new trace: the sampling decision is made here, once
            trace_id = secrets.token_hex(16)
            flags = "01" if int(trace_id[16:], 16) < _state["sample_below"] else "00"
            self.trace = TraceContext(trace_id, span_id, flags)
        else:  # the caller decided: follow its sampled flag
            self.trace = TraceContext(parent.trace_id, span_id, "01" if sampled(parent) else "00")
        self.span: Span | None = None
        if self.trace.flags == "01":
            service = service or _service.get() or _default_service[0]
            parent_id = parent.span_id if parent is not None else None
            self.span = Span(self.trace, parent_id, name, service, kind, attributes, time.time_ns())
        self._prev_trace = context.current_trace()
        self._prev_span = _recording.get()
        context.set_trace(self.trace)
        _recording.set(self.span)

    def set(self, key: str, value: Any) -> None:
        if value is not None and self.span is not None:
            self.span.attributes[key] = value

    def rename(self, name: str) -> None:
        if self.span is not None:
            self.span.name = name

    def fail(self, error: BaseException | None = None) -> None:
        """Mark the span as failed (an exception, or an outcome such as a 5xx answer)."""
        if self.span is not None:
            self.span.status = "error"
            if error is not None:
                self.span.attributes["error.type"] = type(error).__name__
                self.span.attributes["error.message"] = str(error)[:300]

    def end(self, error: BaseException | None = None, *, restore: bool = True, record: bool = True) -> None:
        """Finish the span (unless `record` is False: then it only stops being the current context,
        and a later `end(restore=False)` finishes it) and give the previous context back."""
        if error is not None:
            self.fail(error)
        if record and self.span is not None:
            self.span.finish(time.time_ns())
        if restore:
            context.set_trace(self._prev_trace)
            _recording.set(self._prev_span)

    def __enter__(self) -> Active:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(exc)


def start(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    parent: TraceContext | None,
    service: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Active | None:
    """A span under an explicit parent (a request's or an event's traceparent; None = a new trace).
    None when tracing is off."""
    if not _state["enabled"]:
        return None
    if service is not None:
        _service.set(service)
    return Active(name, kind, parent, service, attributes)


def child(
    name: str, *, kind: SpanKind = INTERNAL, attributes: Mapping[str, Any] | None = None
) -> Active | None:
    """A span under the current trace context, if there is one and it is sampled; else None (and
    nothing is recorded: background work outside any trace does not start traces of its own)."""
    if not _state["enabled"]:
        return None
    parent = context.current_trace()
    if parent is None or not sampled(parent):
        return None
    return Active(name, kind, parent, None, attributes)


def sampled(trace: TraceContext) -> bool:
    """The W3C sampled flag (bit 0; other bits, such as the random-trace-id flag, do not matter)."""
    return trace.flags in ("01", "03") or bool(int(trace.flags, 16) & 1)


def tag(**attributes: Any) -> None:
    """Add attributes to the span currently running (if one is recording), e.g. business ids."""
    span = _recording.get()
    if span is not None:
        for key, value in attributes.items():
            if value is not None:
                span.attributes[f"bank.{key}"] = value


def event_attributes(event_type: str, event_id: str, subject: str, data: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"event.type": event_type, "event.id": event_id, "bank.subject": subject}
    for key in ID_FIELDS:
        value = data.get(key)
        if isinstance(value, str):
            attrs[f"bank.{key}"] = value
    return attrs


def unsampled(parent: TraceContext | None) -> TraceContext:
    """A context that propagates the trace id but records nothing below it (probes, ops polling)."""
    base = parent.child() if parent else TraceContext.new()
    return TraceContext(base.trace_id, base.span_id, "00")


def record_publishes(service: str, rows: Iterable[tuple[str, str]], started_ns: int) -> None:
    """One `relay.publish` span per sampled event of a published batch (rows: topic, payload JSON),
    each a child of the event's emit span, all spanning the batch's publish call."""
    if not _state["enabled"]:
        return
    ended = time.time_ns()
    for topic, payload in rows:
        m = _TRACEPARENT_IN_JSON.search(payload)
        if m is None:
            continue
        parent = TraceContext.parse(m.group(1))
        if parent is None or not sampled(parent):
            continue
        span = Span(
            parent.child(), parent.span_id, f"relay.publish {topic}", service, PRODUCER,
            {"messaging.destination.name": topic}, started_ns,
        )  # fmt: skip
        span.finish(ended)


def is_trace_id(text: str) -> bool:
    return bool(_HEX32.match(text))


def spans_router(internal_token: str | None = None) -> APIRouter:
    """`GET /internal/spans`: this process's span ring, for the gateway's ops page (internal token)."""
    api = APIRouter()

    @api.get("/internal/spans", include_in_schema=False)
    async def spans(
        request: Request,
        trace_id: str | None = Query(default=None, max_length=32),
        q: str | None = Query(default=None, max_length=200),
        recent: str | None = Query(default=None, max_length=200),
        limit: int = Query(default=20, ge=1, le=200),
    ) -> dict[str, Any]:
        _check_internal(request, internal_token)
        if recent is not None:
            return {"spans": RING.recent(recent, limit)}
        return {"spans": RING.find(trace_id=trace_id, search=q)}

    @api.get("/internal/dead-letters", include_in_schema=False)
    async def dead_letters(request: Request) -> dict[str, Any]:
        """The last dead letters this process parked (the dead-letter table is the record)."""
        _check_internal(request, internal_token)
        return {"dead_letters": list(RECENT_DEAD_LETTERS)}

    return api


def _check_internal(request: Request, internal_token: str | None) -> None:
    expected = getattr(request.app.state, "internal_token", None) or internal_token or _bank_token()
    given = request.headers.get("x-internal-token", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise BankError("unauthorized.internal", "this route is for the bank's own services")


def _bank_token() -> str:
    from shared.config import BankSettings, load

    return load(BankSettings).internal_token
