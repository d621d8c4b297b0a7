"""Export of finished spans by OTLP/HTTP (Jaeger, Tempo, any collector), when `BANK_OTLP_ENDPOINT`
is set. The spans are `shared.tracing`'s own records; this turns each into the OpenTelemetry SDK's
read-only span and leaves batching, encoding and sending to the SDK's batch processor and exporter,
which run on a background thread."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from shared.tracing import StoredSpan

_SCOPE = InstrumentationScope("bank.shared")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class OtlpExporter:
    def __init__(self, endpoint: str) -> None:
        endpoint = endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        self.endpoint = endpoint
        self._batches = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
        self._resources: dict[str, Resource] = {}

    def export(self, span: StoredSpan, kind: SpanKind) -> None:
        self._batches.on_end(self._readable(span, kind))

    def flush(self, timeout_millis: int = 2000) -> None:
        self._batches.force_flush(timeout_millis)

    def close(self) -> None:
        """Send what is batched and stop the background thread."""
        self._batches.shutdown()

    def _readable(self, span: StoredSpan, kind: SpanKind) -> ReadableSpan:
        resource = self._resources.get(span.service)
        if resource is None:
            resource = Resource.create({"service.name": span.service, "service.namespace": "bank"})
            self._resources[span.service] = resource
        trace_id = int(span.trace_id, 16)
        parent = None
        if span.parent_id is not None:
            parent = SpanContext(trace_id, int(span.parent_id, 16), is_remote=True, trace_flags=_SAMPLED)
        attributes = {k: list(v) if isinstance(v, tuple) else v for k, v in span.attributes}
        return ReadableSpan(
            name=span.name,
            context=SpanContext(trace_id, int(span.span_id, 16), is_remote=False, trace_flags=_SAMPLED),
            parent=parent,
            resource=resource,
            attributes=attributes,
            kind=kind,
            status=Status(StatusCode.ERROR) if span.status == "error" else Status(StatusCode.UNSET),
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=_SCOPE,
        )
