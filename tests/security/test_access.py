"""Attacker's checklist, access: another customer's ids, and tokens that must not be accepted.

The sweep is built from the gateway's merged OpenAPI, so a route added to routes.toml and served by
its upstream is covered the day it appears.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.auth import AUDIENCE, ISSUER
from tests.security.conftest import SecurityBank
from tests.security.support import Operation, build, operations


def _user_operations(doc: dict) -> list[Operation]:
    return [op for op in operations(doc) if op.auth == "user"]


def _names_another_customer(op: Operation) -> bool:
    """The operation takes an id (path, query or form) that could be someone else's."""
    names = op.param_names("path") + op.param_names("query") + list((op.form or {}).get("properties", {}))
    return any((n.endswith("_id") and n != "client_id") or n == "id" for n in names)


async def test_a_token_never_reaches_b_data_on_any_user_route(security_bank: SecurityBank) -> None:
    bank, a, b = security_bank, security_bank.a, security_bank.b
    swept, answers = [], {}
    leaks = []
    async with httpx.AsyncClient(base_url=bank.url, timeout=30, headers=b.auth) as c:
        b_before = (await c.get("/balance", params={"account_id": b.account_id})).json()["total_balance"]
    async with httpx.AsyncClient(base_url=bank.url, timeout=30, headers=a.auth) as c:
        for op in _user_operations(bank.openapi):
            if not _names_another_customer(op):
                continue
            request = build(op, b.ids)
            if op.form is None and op.json_body is None and op.method in ("patch", "post", "put"):
                request["data"] = {"metadata[note]": "mallory was here"}
            r = await c.request(**request)
            swept.append(op.label)
            answers[op.label] = r.status_code
            exposed = [
                s for s in b.secrets_shown_only_to_owner() if s in r.text and s not in str(request["url"])
            ]
            exposed = [s for s in exposed if s not in json.dumps(request.get("params", {}))]
            if r.status_code not in (403, 404) or exposed:
                leaks.append(f"{op.label} -> {r.status_code} {r.text[:300]} exposed={exposed}")
    assert len(swept) >= 10, f"too few routes name an id: {swept}"
    assert not leaks, "A reached B's things:\n" + "\n".join(leaks)

    # ...and nothing of B's changed: card still active, webhook and device still there, money untouched.
    async with httpx.AsyncClient(base_url=bank.url, timeout=30, headers=b.auth) as c:
        cards = (await c.get("/cards", params={"account_id": b.account_id})).json()["cards"]
        assert {card["id"]: card["status"] for card in cards}[b.card_id] == "active"
        balance = (await c.get("/balance", params={"account_id": b.account_id})).json()
        assert balance["total_balance"] == b_before, balance
        if "webhook" in b.ids:
            hooks = (await c.get("/webhooks", params={"account_id": b.account_id})).json()["webhooks"]
            assert b.ids["webhook"] in {h["id"] for h in hooks}
        if "device" in b.ids:
            devices = (await c.get("/devices")).json()["devices"]
            assert b.ids["device"] in {d["id"] for d in devices}


async def test_a_token_never_reaches_b_files_receipts_or_pots(security_bank: SecurityBank) -> None:
    """The IDOR matrix for what the sweep above cannot fill in (a file's URL, a JSON receipt), and B's pot
    named in every pot and payment call (issue 23)."""
    bank, a, b = security_bank, security_bank.a, security_bank.b
    assert {"pot", "attachment", "file", "receipt"} <= set(b.ids), b.ids
    pot = b.ids["pot"]
    file_path = b.ids["file"].removeprefix(bank.url)
    async with httpx.AsyncClient(base_url=bank.url, timeout=30, headers=a.auth) as c:
        move = {"amount": "1", "dedupe_id": "idor"}
        attempts = [
            c.get(file_path),
            c.put(
                "/transaction-receipts",
                json={
                    "transaction_id": b.ids["transaction"],
                    "external_id": "mallory",
                    "total": 1,
                    "currency": "GBP",
                },
            ),
            c.get("/transaction-receipts", params={"external_id": b.ids["receipt"]}),
            c.delete("/transaction-receipts", params={"external_id": b.ids["receipt"]}),
            c.post("/attachment/deregister", data={"id": b.ids["attachment"]}),
            c.post(
                "/attachment/register",
                data={
                    "external_id": b.ids["transaction"],
                    "file_url": b.ids["file"],
                    "file_type": "image/png",
                },
            ),
            c.put(f"/pots/{pot}/deposit", data={**move, "source_account_id": a.account_id}),
            c.put(f"/pots/{pot}/withdraw", data={**move, "destination_account_id": a.account_id}),
            c.delete(f"/pots/{pot}"),
            c.get("/pots", params={"current_account_id": b.account_id}),
            c.post(
                "/payments",
                data={
                    "source_account_id": b.account_id,
                    "amount": "1",
                    "currency": "GBP",
                    "recipient": a.email,
                    "dedupe_id": "idor",
                },
            ),
        ]
        leaks = []
        for attempt in attempts:
            r = await attempt
            if r.status_code not in (403, 404) or b.name in r.text or b.email in r.text:
                leaks.append(f"{r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:200]}")
    assert not leaks, "\n".join(leaks)
    async with httpx.AsyncClient(base_url=bank.url, timeout=30, headers=b.auth) as c:
        r = await c.get("/transaction-receipts", params={"external_id": b.ids["receipt"]})
        assert r.status_code == 200 and r.json()["receipt"]["total"] == 1915
        shown = (await c.get(f"/transactions/{b.ids['transaction']}")).json()["transaction"]
        assert [x["id"] for x in shown["attachments"]] == [b.ids["attachment"]]
        pots = (await c.get("/pots", params={"current_account_id": b.account_id})).json()["pots"]
        assert [(p["id"], p["balance"], p["deleted"]) for p in pots] == [(pot, 100, False)]


async def test_every_user_route_refuses_no_token_and_garbage_tokens(security_bank: SecurityBank) -> None:
    bad = []
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=30) as c:
        for op in _user_operations(security_bank.openapi):
            request = build(op, security_bank.a.ids)
            for header in ({}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic YTpi"}):
                r = await c.request(**{**request, "headers": {**request["headers"], **header}})
                code = (
                    r.json().get("code", "")
                    if r.headers.get("content-type", "").startswith("application/json")
                    else ""
                )
                if r.status_code != 401 or not code.startswith("unauthorized."):
                    bad.append(f"{op.label} {header or 'no token'} -> {r.status_code} {r.text[:200]}")
    assert not bad, "\n".join(bad)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signing_key(bank: SecurityBank) -> tuple[str, Ed25519PrivateKey]:
    """The bank's own active signing key (from its database): to forge what only a key thief could."""
    from cryptography.hazmat.primitives import serialization

    with psycopg.connect(bank.cluster.libpq_url) as conn:
        kid, pem = conn.execute(
            "SELECT kid, private_pem FROM accounts.signing_keys WHERE active ORDER BY created DESC LIMIT 1"
        ).fetchone()  # type: ignore[misc]
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return kid, key


# The algorithm-confusion forgery signs with the key id as an HMAC secret: short on purpose.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_forged_expired_alg_none_wrong_key_and_wrong_audience_tokens_get_401(
    security_bank: SecurityBank,
) -> None:
    a = security_bank.a
    kid, real_key = _signing_key(security_bank)
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": a.user_id,
        "client_id": "oauthclient_mondo_app",
        "jti": "tok_forged",
        "iat": now,
        "exp": now + 3600,
    }
    thief = Ed25519PrivateKey.generate()
    header, payload, signature = a.token.split(".")
    tokens = {
        "wrong key, real kid": jwt.encode(claims, thief, algorithm="EdDSA", headers={"kid": kid}),
        "wrong key, own kid": jwt.encode(claims, thief, algorithm="EdDSA", headers={"kid": "key_mallory"}),
        "alg none": f"{_b64(json.dumps({'alg': 'none', 'kid': kid}).encode())}."
        f"{_b64(json.dumps(claims).encode())}.",
        "alg none, no signature part": f"{_b64(json.dumps({'alg': 'none'}).encode())}."
        f"{_b64(json.dumps(claims).encode())}",
        "HS256 with the kid as secret": jwt.encode(claims, kid, algorithm="HS256", headers={"kid": kid}),
        "expired": jwt.encode(
            {**claims, "iat": now - 7200, "exp": now - 3600},
            real_key,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "wrong audience": jwt.encode(
            {**claims, "aud": "another-api"}, real_key, algorithm="EdDSA", headers={"kid": kid}
        ),
        "wrong issuer": jwt.encode(
            {**claims, "iss": "mallory"}, real_key, algorithm="EdDSA", headers={"kid": kid}
        ),
        "no subject": jwt.encode(
            {k: v for k, v in claims.items() if k != "sub"}, real_key, algorithm="EdDSA", headers={"kid": kid}
        ),
        "payload swapped under a real signature": ".".join(
            (header, _b64(json.dumps({**claims, "sub": "user_x"}).encode()), signature)
        ),
        "signature stripped": f"{header}.{payload}.",
    }
    wrong = []
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=30) as c:
        for what, token in tokens.items():
            for path, params in (("/ping/whoami", {}), ("/balance", {"account_id": a.account_id})):
                r = await c.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
                body = r.json()
                if r.status_code != 401 or not body.get("code", "").startswith(
                    "unauthorized.bad_access_token"
                ):
                    wrong.append(f"{what} on {path}: {r.status_code} {r.text[:200]}")
        # The genuine token still works: the refusals above are about the tokens, not the routes.
        assert (await c.get("/ping/whoami", headers=a.auth)).json()["authenticated"] is True
    assert not wrong, "\n".join(wrong)


async def test_network_routes_refuse_customers_and_bad_keys(security_bank: SecurityBank) -> None:
    network = [op for op in operations(security_bank.openapi) if op.auth == "network"]
    assert network
    bad = []
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=30) as c:
        for op in network:
            for headers in (
                security_bank.a.auth,
                {"x-network-key": "dev-network-key-but-wrong"},
                {"x-network-key": ""},
                {},
            ):
                r = await c.post(op.path, json={}, headers=headers)
                if r.status_code != 401 or not r.json().get("code", "").startswith("unauthorized."):
                    bad.append(f"{op.label} {list(headers)} -> {r.status_code} {r.text[:200]}")
    assert not bad, "\n".join(bad)


ISSUE_23 = (
    ("get", "/pots"), ("post", "/pots"), ("delete", "/pots/{pot_id}"), ("put", "/pots/{pot_id}/deposit"),
    ("put", "/pots/{pot_id}/withdraw"), ("post", "/payments"), ("post", "/attachment/upload"),
    ("post", "/attachment/register"), ("post", "/attachment/deregister"), ("get", "/attachment/files/{key}"),
    ("put", "/attachment/blobs/{key}"), ("get", "/attachment/blobs/{key}"), ("put", "/transaction-receipts"),
    ("get", "/transaction-receipts"), ("delete", "/transaction-receipts"),
)  # fmt: skip


async def test_every_issue_23_path_is_in_the_merged_openapi(security_bank: SecurityBank) -> None:
    """So the sweeps above and the Schemathesis run reach them."""
    paths = security_bank.openapi["paths"]
    missing = [f"{m.upper()} {p}" for m, p in ISSUE_23 if m not in paths.get(p, {})]
    assert not missing, missing
    user = {op.label for op in operations(security_bank.openapi) if op.auth == "user"}
    assert {f"{m.upper()} {p}" for m, p in ISSUE_23 if "/blobs/" not in p} <= user
