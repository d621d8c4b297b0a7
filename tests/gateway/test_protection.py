"""Rate limits (429 + Retry-After) per client IP and per user, and one access log line per request."""

from __future__ import annotations

import logging

import pytest

from tests.gateway.conftest import Gateway, Upstreams


async def test_per_ip_limit_429_with_retry_after(lab: Gateway) -> None:
    async with lab.client() as client:
        statuses = [(await client.get("/limited")).status_code for _ in range(2)]
        assert statuses == [200, 200]  # burst 2
        r = await client.get("/limited")
        assert r.status_code == 429
        assert r.json()["code"] == "rate_limited.too_many_requests"
        assert int(r.headers["retry-after"]) >= 1  # 0.5 tokens/s: about 2 s
        assert r.headers["x-request-id"]
        assert (await client.get("/lp/x")).status_code == 200  # another class: its own bucket


async def test_per_user_limits_are_separate(lab: Gateway, upstreams: Upstreams) -> None:
    ada = {"authorization": f"Bearer {upstreams.accounts.token('user_limit_ada')}"}
    bob = {"authorization": f"Bearer {upstreams.accounts.token('user_limit_bob')}"}
    async with lab.client() as client:
        assert [(await client.get("/limited-user", headers=ada)).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        r = await client.get("/limited-user", headers=ada)
        assert r.status_code == 429 and r.headers["retry-after"] in ("1", "2")
        assert (await client.get("/limited-user", headers=bob)).status_code == 200  # same IP, other user


async def test_one_json_log_line_per_request(
    gateway: Gateway, upstreams: Upstreams, caplog: pytest.LogCaptureFixture
) -> None:
    token = upstreams.accounts.token("user_logged")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        async with gateway.client() as client:
            r = await client.get(
                "/accounts", headers={"authorization": f"Bearer {token}", "x-request-id": "log-1"}
            )
            await client.get("/nope", headers={"x-request-id": "log-2"})
    lines = [rec for rec in caplog.records if rec.name == "gateway.access"]
    by_id = {rec.fields["request_id"]: rec.fields for rec in lines}  # type: ignore[attr-defined]
    assert [rec.fields["request_id"] for rec in lines].count("log-1") == 1  # type: ignore[attr-defined]
    ok = by_id["log-1"]
    assert ok["route"] == "/accounts" and ok["upstream"] == "accounts"
    assert ok["method"] == "GET" and ok["status"] == 200
    assert ok["user_id"] == "user_logged" and ok["client_ip"] == "127.0.0.1"
    assert ok["trace_id"] == r.headers["traceparent"].split("-")[1]
    assert isinstance(ok["latency_ms"], float)
    missing = by_id["log-2"]
    assert missing["status"] == 404 and missing["route"] is None and missing["user_id"] is None

    from shared.observability import JsonFormatter

    line = JsonFormatter().format(next(rec for rec in lines if rec.fields["request_id"] == "log-1"))  # type: ignore[attr-defined]
    assert '"route": "/accounts"' in line and '"latency_ms"' in line
