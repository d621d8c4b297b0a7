"""Identity at the edge over real sockets: tokens checked against the fake accounts' JWKS and
revocation list, identities asserted to upstreams, impersonation headers stripped, the network key."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any

import jwt

from bank.infra.ports import free_port
from shared.auth import SigningKey
from tests.gateway.conftest import (
    INTERNAL_TOKEN,
    NETWORK_KEY,
    Gateway,
    Upstreams,
    bank_settings,
    gateway_settings,
    start_gateway,
)
from tests.support.waiting import eventually


def assert_bad_token(resp: Any, code: str = "unauthorized.bad_access_token", case: str = "") -> None:
    assert resp.status_code == 401, (case, resp.text)
    body = resp.json()
    assert body["code"] == code, case
    assert body["error"] == "invalid_token"
    assert body["message"]
    assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_a_good_token_passes_and_upstream_sees_who(gateway: Gateway, upstreams: Upstreams) -> None:
    token = upstreams.accounts.token("user_ada", "oauth2client_app")
    async with gateway.client() as client:
        r = await client.get("/accounts", headers=bearer(token))
    assert r.status_code == 200
    seen = r.json()["headers"]
    assert seen["x-bank-user-id"] == "user_ada"
    assert seen["x-bank-client-id"] == "oauth2client_app"
    assert seen["authorization"] == f"Bearer {token}"  # upstreams verify it too


async def test_rejected_tokens(gateway: Gateway, upstreams: Upstreams) -> None:
    accounts = upstreams.accounts
    key = accounts.key
    now = int(time.time())
    good = accounts.token()
    head, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "user_mallory"}).encode()).rstrip(b"=")
    # One character in the middle: still canonical base64url (the last character carries padding bits,
    # and changing it can make the token malformed rather than wrongly signed).
    flipped = signature[:20] + ("A" if signature[20] != "A" else "B") + signature[21:]
    wrong_audience = jwt.encode(
        {**claims, "aud": "someone-else"}, key.private_key, algorithm="EdDSA", headers={"kid": key.kid}
    )
    impostor_same_kid = SigningKey(key.kid, SigningKey.generate().private_key)
    cases = {
        "missing": (None, "unauthorized.bad_access_token.missing"),
        "not bearer": ("Basic Zm9vOmJhcg==", "unauthorized.bad_access_token.missing"),
        "garbage": ("Bearer not-a-jwt", "unauthorized.bad_access_token.malformed"),
        "expired": (
            f"Bearer {key.issue('user_ada', 'c', 60, now=now - 3600)[0]}",
            "unauthorized.bad_access_token.expired",
        ),
        "tampered payload": (f"Bearer {head}.{forged.decode()}.{signature}", "unauthorized.bad_access_token"),
        "tampered signature": (f"Bearer {head}.{payload}.{flipped}", "unauthorized.bad_access_token"),
        "other key, same kid": (
            f"Bearer {impostor_same_kid.issue('user_ada', 'c', 600)[0]}",
            "unauthorized.bad_access_token",
        ),
        "other key, unknown kid": (
            f"Bearer {SigningKey.generate().issue('user_ada', 'c', 600)[0]}",
            "unauthorized.bad_access_token",
        ),
        "wrong audience": (f"Bearer {wrong_audience}", "unauthorized.bad_access_token"),
    }
    before = len(upstreams.states["accounts"].seen)
    async with gateway.client() as client:
        for name, (authorization, code) in cases.items():
            headers = {"authorization": authorization} if authorization else {}
            r = await client.get("/accounts", headers=headers)
            assert_bad_token(r, code, name)
    assert len(upstreams.states["accounts"].seen) == before  # none of them reached accounts


async def test_revoked_token_refused_after_the_next_poll(gateway: Gateway, upstreams: Upstreams) -> None:
    accounts = upstreams.accounts
    token, jti = accounts.key.issue("user_bob", "oauth2client_app", 600)
    revocations = gateway.app.state.gateway.revocations
    async with gateway.client() as client:
        assert (await client.get("/balance", headers=bearer(token))).status_code == 200
        accounts.revoked[jti] = int(time.time()) + 600
        await eventually(lambda: revocations.is_revoked(jti))
        r = await client.get("/balance", headers=bearer(token))
        assert_bad_token(r, "unauthorized.bad_access_token.evicted")
        # A fresh token for the same user still works.
        assert (await client.get("/balance", headers=bearer(accounts.token("user_bob")))).status_code == 200
    # Polls ask only for what changed: `since` is the previous as_of minus a minute (decision 0006).
    sinces = [s for s in accounts.revocation_polls if s]
    assert sinces and sinces[-1].endswith("Z")
    assert time.time() - 75 < _epoch(sinces[-1]) < time.time() - 45


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


async def test_unknown_kids_refresh_the_jwks_at_most_once_per_interval(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    accounts = upstreams.accounts
    await eventually(
        lambda: time.monotonic() - (gateway.app.state.gateway.keys.last_attempt or 0) > 0.6, timeout=2
    )
    hits = accounts.jwks_hits
    started = time.monotonic()
    async with gateway.client() as client:
        for _ in range(40):
            garbage = SigningKey.generate().issue("user_ada", "c", 600)[0]
            assert_bad_token(await client.get("/accounts", headers=bearer(garbage)))
    elapsed = time.monotonic() - started
    # jwks_min_refresh_seconds = 0.5: one fetch, plus one per half-second the burst lasted.
    assert accounts.jwks_hits - hits <= 1 + int(elapsed / 0.5)
    assert accounts.jwks_hits - hits < 10

    # Key rotation: accounts publishes a new key; the first token signed with it loads it.
    rotated = SigningKey.generate()
    accounts.extra_keys.append(rotated)
    try:
        await eventually(
            lambda: time.monotonic() - (gateway.app.state.gateway.keys.last_attempt or 0) > 0.6, timeout=2
        )
        token = rotated.issue("user_eve", "c", 600)[0]
        async with gateway.client() as client:
            r = await client.get("/accounts", headers=bearer(token))
            assert r.status_code == 200 and r.json()["headers"]["x-bank-user-id"] == "user_eve"
            # Retiring the key retires its tokens, even ones the gateway has already verified.
            accounts.extra_keys.remove(rotated)
            assert await gateway.app.state.gateway.keys.refresh()
            assert_bad_token(await client.get("/accounts", headers=bearer(token)))
    finally:
        if rotated in accounts.extra_keys:
            accounts.extra_keys.remove(rotated)


async def test_no_client_can_impersonate_a_user_or_a_service(gateway: Gateway, upstreams: Upstreams) -> None:
    spoof = {
        "x-bank-user-id": "user_mallory",
        "X-Bank-Client-Id": "oauth2client_evil",
        "x-bank-role": "admin",
        "x-internal-token": INTERNAL_TOKEN,
    }
    async with gateway.client() as client:
        r = await client.get("/accounts", headers={**spoof, **bearer(upstreams.accounts.token("user_ada"))})
        seen = r.json()["headers"]
        assert seen["x-bank-user-id"] == "user_ada"
        assert seen["x-bank-client-id"] == "oauth2client_app"
        assert "x-bank-role" not in seen and "x-internal-token" not in seen

        r = await client.post("/users", headers=spoof, data={"email": "m@example.com"})  # no token needed
        seen = r.json()["headers"]
        assert not [h for h in seen if h.startswith("x-bank-")] and "x-internal-token" not in seen

        r = await client.get("/accounts", headers=spoof)  # the spoofed identity alone gets nowhere
        assert_bad_token(r, "unauthorized.bad_access_token.missing")


async def test_network_routes_need_the_network_key_not_a_user_token(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    user = bearer(upstreams.accounts.token())
    async with gateway.client() as client:
        for headers in ({}, {"x-network-key": "guess"}, user, {"x-network-key": NETWORK_KEY + "x"}):
            r = await client.post("/network/authorisations", headers=headers, json={"amount": 100})
            assert r.status_code == 401, headers
            assert r.json()["code"] == "unauthorized.bad_network_key"
        r = await client.post(
            "/network/authorisations",
            headers={"x-network-key": NETWORK_KEY, "x-internal-token": "forged", **user},
            json={"amount": 100},
        )
    assert r.status_code == 200
    seen = r.json()
    assert seen["service"] == "cards"
    assert seen["headers"]["x-internal-token"] == INTERNAL_TOKEN  # the gateway vouches, cards trusts
    assert "x-network-key" not in seen["headers"]
    assert "authorization" not in seen["headers"]
    assert "x-bank-user-id" not in seen["headers"]
    assert json.loads(seen["body"]) == {"amount": 100}
    async with gateway.client() as client:  # the form cards accepts directly works here too
        r = await client.post("/network/authorisations", headers={"authorization": f"Bearer {NETWORK_KEY}"})
    assert r.status_code == 200 and "authorization" not in r.json()["headers"]


async def test_keys_unavailable_is_503_and_the_gateway_stays_ready(upstreams: Upstreams) -> None:
    """accounts unreachable: tokens cannot be checked (503, not 401: they may be fine), but the gateway
    stays ready, because the card network's path does not need accounts' keys."""
    settings = bank_settings(upstreams, accounts_url=f"http://127.0.0.1:{free_port()}")
    gw = await start_gateway(settings, gateway_settings())
    try:
        async with gw.client() as client:
            r = await client.get("/accounts", headers=bearer(upstreams.accounts.token()))
            assert r.status_code == 503
            assert r.json()["code"] == "service_unavailable.accounts"
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            identity = ready.json()["checks"]["identity"]
            assert identity["jwks_loaded"] == "no" and "jwks_error" in identity
            r = await client.post("/network/authorisations", headers={"x-network-key": NETWORK_KEY})
            assert r.status_code == 200 and r.json()["service"] == "cards"
    finally:
        await gw.server.stop()
