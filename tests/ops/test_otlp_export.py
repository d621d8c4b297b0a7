"""Spans leave by OTLP/HTTP when `BANK_OTLP_ENDPOINT` is set: a real local HTTP server plays the
collector (Tempo, Jaeger) and decodes what arrives with OpenTelemetry's own protobuf schema."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from shared import context, tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        Collector.received.append((self.path, request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[str]:
    Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_spans_are_exported_by_otlp_http_with_their_parents_and_attributes(collector: str) -> None:
    tracing.configure("ops-test", tracing.TracingSettings(tracing=True, otlp_endpoint=collector))
    context.set_trace(None)
    try:
        server = tracing.start(
            "POST", kind=tracing.SERVER, parent=context.TraceContext.parse(PARENT), service="cards",
            attributes={"url.path": "/network/authorisations"},
        )  # fmt: skip
        assert server is not None
        client = tracing.child("POST accounts", kind=tracing.CLIENT)
        assert client is not None
        client.end(RuntimeError("accounts went away"))
        server.rename("POST /network/authorisations")
        server.set("bank.tags", ["a", "b"])
        server.end()
        tracing.shutdown()  # flushes the batch
    finally:
        context.set_trace(None)
        tracing.configure("ops-test", tracing.TracingSettings())

    assert Collector.received, "the collector got no export"
    assert {path for path, _ in Collector.received} == {"/v1/traces"}
    spans = {}
    for _, request in Collector.received:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = resource["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans[span.name] = (service, span)
    service, root = spans["POST /network/authorisations"]
    assert service == "cards"
    assert root.trace_id.hex() == PARENT.split("-")[1]
    assert root.parent_span_id.hex() == PARENT.split("-")[2]  # the caller's span
    assert root.kind == root.SPAN_KIND_SERVER
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["url.path"].string_value == "/network/authorisations"
    assert [v.string_value for v in attributes["bank.tags"].array_value.values] == ["a", "b"]
    assert root.end_time_unix_nano >= root.start_time_unix_nano > 0
    _, failed = spans["POST accounts"]
    assert failed.parent_span_id == root.span_id and failed.trace_id == root.trace_id
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert {a.key: a.value.string_value for a in failed.attributes}["error.type"] == "RuntimeError"


def test_new_traces_are_sampled_by_the_trace_ids_low_bits_as_opentelemetry_does() -> None:
    """TraceIdRatioBased: a new trace is sampled when its id's low 64 bits are below ratio * 2^64, so
    every service given the same id and ratio would decide alike."""
    tracing.configure("ops-test", tracing.TracingSettings(tracing=True, trace_sample_ratio=0.25))
    context.set_trace(None)
    try:
        decisions = []
        for _ in range(400):
            span = tracing.start("GET", kind=tracing.SERVER, parent=None, service="ops-test")
            assert span is not None
            low_bits = int(span.trace.trace_id[16:], 16)
            assert (span.trace.flags == "01") == (low_bits < 2**62)
            decisions.append(span.trace.flags == "01")
            span.end()
        assert 0 < sum(decisions) < 400  # both outcomes happen at 0.25
    finally:
        context.set_trace(None)
        tracing.configure("ops-test", tracing.TracingSettings())
