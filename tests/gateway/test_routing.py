"""Routing and proxying over real sockets: which upstream, what it sees, what the client gets back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from services.gateway.config import DEV_OPS_TOKEN as OPS_TOKEN
from tests.gateway.conftest import Gateway, Upstreams


async def test_routes_to_the_right_upstream_with_path_and_query_intact(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    auth = {"authorization": f"Bearer {upstreams.accounts.token()}"}
    cases = [
        ("GET", "/accounts", "accounts"),
        ("GET", "/balance?account_id=acc_1", "accounts"),
        ("POST", "/topup", "accounts"),
        ("GET", "/ping/whoami", "accounts"),
        ("GET", "/cards/card_1", "cards"),
        ("GET", "/transactions/tx_1?expand[]=merchant", "transactions"),
        ("PATCH", "/transactions/tx_1", "transactions"),
        ("DELETE", "/webhooks/webhook_1", "webhooks"),
        ("POST", "/feed", "notifications"),
        ("GET", "/devices", "notifications"),
    ]
    async with gateway.client() as client:
        for method, target, service in cases:
            r = await client.request(method, target, headers=auth)
            assert r.status_code == 200, (target, r.text)
            seen = r.json()
            assert seen["service"] == service
            assert seen["method"] == method
            path = target.partition("?")[0]
            assert seen["path"] == path
            assert r.headers["x-upstream"] == service
        assert upstreams.last("transactions")["path"] == "/transactions/tx_1"
        r = await client.get("/transactions/tx_1", params={"expand[]": "merchant"}, headers=auth)
        assert r.json()["query"] == "expand%5B%5D=merchant"
        r = await client.post("/oauth2/token", data={"grant_type": "password"})  # no token needed
        assert r.status_code == 200 and r.json()["body"] == "grant_type=password"


async def test_unknown_paths_404_and_segment_boundaries(gateway: Gateway) -> None:
    async with gateway.client() as client:
        for path in ("/accountsX", "/nope", "/", "/ping", "/oauth2/revocations", "/Accounts"):
            r = await client.get(path)
            assert r.status_code == 404, path
            assert r.json()["code"] == "not_found.route"
            assert "x-request-id" in r.headers and "traceparent" in r.headers


async def test_wrong_method_405_with_allow(gateway: Gateway) -> None:
    async with gateway.client() as client:
        r = await client.delete("/accounts")
        assert r.status_code == 405
        assert r.json()["code"] == "method_not_allowed.route"
        assert r.headers["allow"] == "GET"
        r = await client.get("/users")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        r = await client.put("/transactions/tx_1")
        assert r.headers["allow"] == "GET, PATCH"


async def test_longest_prefix_wins_and_falls_back_by_method(lab: Gateway, upstreams: Upstreams) -> None:
    async with lab.client() as client:
        r = await client.get("/lp/x")
        assert r.status_code == 200 and r.json()["service"] == "cards"
        r = await client.get("/lp/private/x")  # the longer prefix asks for a user token
        assert r.status_code == 401
        r = await client.post("/lp/deep/x")
        assert r.status_code == 200 and r.json()["service"] == "transactions"
        r = await client.get("/lp/deep/x")  # /lp/deep has no GET: /lp's GET serves it
        assert r.status_code == 200 and r.json()["service"] == "cards"
        r = await client.put("/lp/deep")
        assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
        r = await client.get("/lpx")
        assert r.status_code == 404


async def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """A hand-written request, for paths an HTTP client library would normalise first."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request)
    await writer.drain()
    data = await reader.read(65536)
    writer.close()
    await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data


async def test_internal_is_never_routed(gateway: Gateway, upstreams: Upstreams) -> None:
    auth = {"authorization": f"Bearer {upstreams.accounts.token()}"}
    before = {name: len(state.seen) for name, state in upstreams.states.items()}
    async with gateway.client() as client:
        for method in ("GET", "POST"):
            for path in ("/internal/holds", "/internal", "/internal/accounts/acc_1"):
                r = await client.request(method, path, headers=auth)
                assert r.status_code == 404, path
    for target in (
        b"/cards/../internal/holds",
        b"/cards/%2e%2e/internal/holds",
        b"/cards/%2E%2E/%2E%2E/internal/holds",
        b"/accounts/./../internal/accounts/acc_1",
        b"/cards/x%2F..%2F..%2Finternal%2Fholds",
    ):
        request = (
            b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\nAuthorization: " + auth["authorization"].encode()
        )
        status, _ = await raw_request(gateway.url, request + b"\r\nConnection: close\r\n\r\n")
        assert status == 404, target
    assert {name: len(state.seen) for name, state in upstreams.states.items()} == before


async def test_forwarding_headers_and_hop_by_hop(lab: Gateway, upstreams: Upstreams) -> None:
    async with lab.client() as client:
        r = await client.get(
            "/lp/hdrs",
            headers={
                "x-forwarded-for": "6.6.6.6",
                "x-forwarded-host": "evil.example",
                "forwarded": "for=6.6.6.6",
                "connection": "keep-alive, x-private-hop",
                "x-private-hop": "1",
                "keep-alive": "timeout=5",
                "te": "trailers",
                "proxy-authorization": "Basic Zm9vOmJhcg==",
                "x-deadline-ms": "999999",
                "x-custom": "kept",
                "host": "api.bank.example",
            },
        )
    seen = r.json()["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the peer, not what the client claimed
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "api.bank.example"
    assert seen["host"] == urlsplit(upstreams.url("cards")).netloc
    assert seen["x-custom"] == "kept"
    for gone in ("forwarded", "x-private-hop", "keep-alive", "te", "proxy-authorization"):
        assert gone not in seen, gone
    assert int(seen["x-deadline-ms"]) <= 2000  # the route's timeout, not the client's claim
    async with lab.client() as client:
        r = await client.get("/lp/hdrs", headers={"x-deadline-ms": "0"})  # ignored at the edge, too
    assert r.status_code == 200 and 0 < int(r.json()["headers"]["x-deadline-ms"]) <= 2000


async def test_response_headers_cleaned_and_cookies_not_shared(lab: Gateway, upstreams: Upstreams) -> None:
    async with lab.client() as client:
        r = await client.get("/odd-headers")
        assert r.status_code == 200
        assert r.headers["x-upstream"] == "cards"
        assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert "keep-alive" not in r.headers and "proxy-agent" not in r.headers
        assert r.headers.get_list("traceparent") and len(r.headers.get_list("traceparent")) == 1
        assert len(r.headers.get_list("server")) <= 1 and len(r.headers.get_list("date")) == 1
    async with lab.client() as fresh:  # another caller: the gateway must not replay the cookies
        r = await fresh.get("/lp/who")
        assert "cookie" not in r.json()["headers"]


async def test_request_id_and_traceparent_on_every_response(gateway: Gateway, upstreams: Upstreams) -> None:
    async with gateway.client() as client:
        r = await client.post("/users", data={"email": "a@example.com"})
        rid = r.headers["x-request-id"]
        assert len(rid) == 32
        seen = upstreams.last("accounts")["headers"]
        assert seen["x-request-id"] == rid
        trace_id = r.headers["traceparent"].split("-")[1]
        assert seen["traceparent"].split("-")[1] == trace_id  # one trace, gateway to upstream

        r = await client.post("/users", headers={"x-request-id": "req-abc.123"})
        assert r.headers["x-request-id"] == "req-abc.123"
        assert upstreams.last("accounts")["headers"]["x-request-id"] == "req-abc.123"
        for insane in ("x" * 200, "<script>", "a b"):
            r = await client.post("/users", headers={"x-request-id": insane})
            assert r.headers["x-request-id"] != insane and len(r.headers["x-request-id"]) == 32

        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        r = await client.post("/users", headers={"traceparent": parent})
        assert r.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
        assert upstreams.last("accounts")["headers"]["traceparent"].split("-")[1] == parent.split("-")[1]

        for path, status in (("/nope", 404), ("/accounts", 401), ("/healthz", 200), ("/ops/health", 401)):
            r = await client.get(path)
            assert r.status_code == status, path
            assert r.headers["x-request-id"] and r.headers["traceparent"], path


async def test_body_limit_on_content_length_and_while_reading(lab: Gateway, upstreams: Upstreams) -> None:
    async with lab.client() as client:
        r = await client.post("/upload", content=b"x" * 1024)
        assert r.status_code == 200 and r.json()["body_length"] == 1024
        seen_before = len(upstreams.states["cards"].seen)
        r = await client.post("/upload", content=b"x" * 1025)
        assert r.status_code == 413
        assert r.json()["code"] == "payload_too_large.request"

        async def chunks(total: int) -> AsyncIterator[bytes]:
            for _ in range(total // 100):
                yield b"y" * 100

        r = await client.post("/upload", content=chunks(2000))  # chunked, no Content-Length
        assert r.status_code == 413
        assert r.json()["code"] == "payload_too_large.request"
        assert len(upstreams.states["cards"].seen) == seen_before
        r = await client.post("/upload", content=chunks(1000))
        assert r.status_code == 200 and r.json()["body"] == "y" * 1000
    # Chunked by hand, 4 x 500 bytes: refused once the running total passes the limit.
    status, _ = await raw_request(
        lab.url,
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"".join(b"%x\r\n" % 500 + b"z" * 500 + b"\r\n" for _ in range(4))
        + b"0\r\n\r\n",
    )
    assert status == 413


async def test_slow_upstream_504_within_the_route_timeout(lab: Gateway, upstreams: Upstreams) -> None:
    async with lab.client() as client:
        r = await client.get("/slow", params={"ms": 0})
        assert r.status_code == 200
        assert 0 < int(r.json()["headers"]["x-deadline-ms"]) <= 300
        started = asyncio.get_running_loop().time()
        r = await client.get("/slow", params={"ms": 5000})
        elapsed = asyncio.get_running_loop().time() - started
        assert r.status_code == 504
        assert r.json()["code"] == "timeout.transactions"
        assert elapsed < 5.0  # answered before the upstream would have


async def test_upstream_down_503(lab: Gateway) -> None:
    async with lab.client() as client:
        r = await client.get("/down")
        assert r.status_code == 503
        assert r.json()["code"] in ("service_unavailable.notifications", "service_unavailable.circuit_open")
        assert "ConnectError" not in r.text  # internal detail stays in the log


async def test_circuit_opens_fails_fast_and_recovers(lab: Gateway, upstreams: Upstreams) -> None:
    state = upstreams.states["webhooks"]
    async with lab.client() as client:
        state.fail = True
        try:
            for _ in range(3):  # breaker_failures = 3, no retries: one failure per request
                r = await client.get("/flaky")
                assert r.status_code == 500  # the upstream's own answer, passed through
            calls = len(state.seen)
            r = await client.get("/flaky")
            assert r.status_code == 503
            assert r.json()["code"] == "service_unavailable.circuit_open"
            ops = (await client.get("/openapi.json")).status_code  # the gateway itself still answers
            assert ops == 200
        finally:
            state.fail = False
        r = await client.get("/flaky")
        assert r.json()["code"] == "service_unavailable.circuit_open"  # healthy again, but still cooling down
        await asyncio.sleep(1.1)  # breaker_reset_seconds = 1: half-open, one trial call
        r = await client.get("/flaky")
        assert r.status_code == 200
        assert len(state.seen) == calls + 1
        assert lab.app.state.gateway.clients["webhooks"].breaker.state == "closed"


async def test_ops_and_health_still_served(gateway: Gateway) -> None:
    async with gateway.client() as client:
        assert (await client.get("/ops/health")).status_code == 401  # the ops credential is required
        client.headers["Authorization"] = f"Bearer {OPS_TOKEN}"
        r = await client.get("/ops/health")
        body = r.json()
        assert set(body["services"]) == {"accounts", "cards", "transactions", "webhooks", "notifications"}
        assert body["gateway"]["circuits"]["accounts"] == "closed"
        assert body["gateway"]["identity"]["jwks_loaded"] == "yes"
        assert "Bank operations" in (await client.get("/ops")).text
        del client.headers["Authorization"]
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["identity"]["ok"] is True
        assert "http_requests_total" in (await client.get("/metrics")).text
        metrics = (await client.get("/metrics")).text
        assert 'route="/ops"' in metrics or 'route="/ops/health"' in metrics
        assert json.loads((await client.get("/openapi.json")).text)["openapi"].startswith("3.")
        assert "swagger-ui" in (await client.get("/docs")).text
