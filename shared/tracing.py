"""Distributed tracing: OpenTelemetry spans on top of `shared.context`'s W3C trace context.

`shared.context.TraceContext` stays the one thing propagated: in a contextvar within a process, in
the `traceparent` header between processes, and in the CloudEvent's `traceparent` across the event
log. This module only records spans for it with the OpenTelemetry SDK: a span starts with the
current TraceContext as its parent, and while it runs the current TraceContext is the span's own
(same trace id, the span's id, the sampled flag), so logs, outgoing calls and emitted events carry
it. No OpenTelemetry context is attached: that would be a second propagation mechanism to keep in
step with the first, and costs more on the hot path.

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
import time
from collections import deque
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, NamedTuple

from fastapi import APIRouter, Query, Request
from opentelemetry import trace as otel
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import context
from shared.context import TraceContext
from shared.errors import BankError
from shared.observability import RECENT_DEAD_LETTERS

__all__ = ["RING", "SpanKind", "Status", "StatusCode", "TracingSettings", "configure", "enabled"]

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

    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: tuple[tuple[str, Any], ...]

    @staticmethod
    def of(s: ReadableSpan) -> tuple[Any, ...]:
        parent = s.parent
        attributes = tuple(
            (k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in (s.attributes or {}).items()
        )
        return (
            s.context.trace_id, s.context.span_id, parent.span_id if parent is not None else None, s.name,
            str(s.resource.attributes.get("service.name", "?")) if s.resource else "?",
            s.kind.name.lower(), s.start_time or 0, s.end_time or s.start_time or 0,
            s.status.status_code.name.lower(), attributes,
        )  # fmt: skip


class SpanRing(SpanProcessor):
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

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(StoredSpan.of(span))

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def clear(self) -> None:
        self.spans.clear()

    def find(
        self, *, trace_id: str | None = None, search: str | None = None, limit: int = 2000
    ) -> list[dict[str, Any]]:
        """Spans of one trace, or of every trace that has a span with an attribute equal to (or, for
        8+ characters, containing) `search`."""
        spans = [StoredSpan._make(t) for t in self.spans]
        traces: set[int] = set()
        if trace_id:
            try:
                traces.add(int(trace_id, 16))
            except ValueError:
                return []
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
        "trace_id": format(s.trace_id, "032x"),
        "span_id": format(s.span_id, "016x"),
        "parent_id": format(s.parent_id, "016x") if s.parent_id is not None else None,
        "name": s.name,
        "service": s.service,
        "kind": s.kind,
        "start_us": s.start_ns // 1000,
        "end_us": s.end_ns // 1000,
        "status": s.status,
        "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in s.attributes},
    }


RING = SpanRing(20_000)
_state: dict[str, Any] = {"enabled": False, "settings": None}
_tracers: dict[str, otel.Tracer] = {}
_providers: list[TracerProvider] = []
_recording: ContextVar[otel.Span | None] = ContextVar("recording_span", default=None)
_service: ContextVar[str | None] = ContextVar("trace_service", default=None)
_default_service = ["bank"]
_EMPTY = Context()


def configure(service: str, settings: TracingSettings | None = None) -> bool:
    """Turn tracing on (or off) for this process, whose spans are reported as `service` by default.
    Safe to call again (tests build several services in one process). Returns whether it is on."""
    settings = settings or TracingSettings()
    previous: TracingSettings | None = _state["settings"]
    if previous is not None and previous.model_dump() != settings.model_dump():
        shutdown()
        _tracers.clear()  # new sampler or exporters: new providers
        _providers.clear()
    _state["settings"] = settings
    _state["enabled"] = settings.tracing
    _default_service[0] = service
    RING.resize(settings.trace_ring_size)
    return settings.tracing


def configured() -> bool:
    return _state["settings"] is not None


def enabled() -> bool:
    return bool(_state["enabled"])


def _tracer(service: str) -> otel.Tracer:
    tracer = _tracers.get(service)
    if tracer is None:
        settings: TracingSettings = _state["settings"] or TracingSettings()
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.namespace": "bank"}),
            sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
        )
        if settings.trace_ring_size > 0:
            provider.add_span_processor(RING)
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            endpoint = settings.otlp_endpoint.rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        _providers.append(provider)
        tracer = _tracers[service] = provider.get_tracer("bank.shared")
    return tracer


def shutdown() -> None:
    """Flush exporters (OTLP batches) at process exit; the ring needs nothing."""
    for provider in _providers:
        provider.force_flush(2000)


def _parent_context(parent: TraceContext | None) -> Context:
    if parent is None:
        return _EMPTY
    remote = SpanContext(
        int(parent.trace_id, 16),
        int(parent.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(parent.flags, 16)),
    )
    return otel.set_span_in_context(NonRecordingSpan(remote), _EMPTY)


def _trace_of(span: otel.Span) -> TraceContext:
    sc = span.get_span_context()
    return TraceContext(
        format(sc.trace_id, "032x"), format(sc.span_id, "016x"), "01" if sc.trace_flags.sampled else "00"
    )


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
        start_time: int | None = None,
    ) -> None:
        service = service or _service.get() or _default_service[0]
        self.span = _tracer(service).start_span(
            name, context=_parent_context(parent), kind=kind, attributes=attributes, start_time=start_time
        )
        self.trace = _trace_of(self.span)
        self._prev_trace = context.current_trace()
        self._prev_span = _recording.get()
        context.set_trace(self.trace)
        _recording.set(self.span if self.span.is_recording() else None)

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self.span.set_attribute(key, value)

    def end(self, error: BaseException | None = None, *, restore: bool = True) -> None:
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))
            self.span.set_attribute("error.type", type(error).__name__)
        self.span.end()
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
                span.set_attribute(f"bank.{key}", value)


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
    tracer = _tracer(service)
    for topic, payload in rows:
        m = _TRACEPARENT_IN_JSON.search(payload)
        if m is None:
            continue
        parent = TraceContext.parse(m.group(1))
        if parent is None or not sampled(parent):
            continue
        span = tracer.start_span(
            f"relay.publish {topic}",
            context=_parent_context(parent),
            kind=PRODUCER,
            attributes={"messaging.destination.name": topic},
            start_time=started_ns,
        )
        span.end(end_time=ended)


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
