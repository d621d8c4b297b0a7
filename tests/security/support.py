"""The attacker's toolkit: people in a real bank, the public surface read from the merged OpenAPI,
and request building that fills every form field sensibly so only the property under test differs."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

APP_CLIENT = "oauthclient_mondo_app"
NETWORK_KEY = "dev-network-key"
METHODS = ("get", "put", "post", "delete", "patch")
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
# A public address literal: no DNS needed, not private (webhook URLs must pass the SSRF rules).
PUBLIC_HOOK = "https://93.184.215.14/hooks/bank"
FREE_FORM_FIELD = "metadata[note]"  # a form of free keys (PATCH /transactions): one key of that shape
ISSUED: list[tuple[str, str]] = []  # (PAN, CVC) of every card these tests were shown: the scan looks for them


@dataclass
class Person:
    name: str
    email: str
    password: str
    user_id: str = ""
    account_id: str = ""
    token: str = ""
    card_id: str = ""
    pan: str = ""
    cvc: str = ""
    expiry: str = ""  # YYMM as the network sends it
    ids: dict[str, str] = field(default_factory=dict)  # kind -> one id of that kind this person owns

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def secrets_shown_only_to_owner(self) -> list[str]:
        """Strings that must never appear in an answer to anyone else."""
        return [s for s in (self.email, self.name, self.user_id, self.pan, *self.ids.values()) if s]


async def sign_up(accounts_url: str, gateway_url: str, tag: str) -> Person:
    """A customer: signed up and signed in at accounts directly (not through the gateway's sign-up
    rate limit), topped up and carded through the gateway."""
    p = Person(
        f"{tag} Tester", f"{tag.lower()}-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(16)
    )
    async with httpx.AsyncClient(base_url=accounts_url, timeout=30) as c:
        r = await c.post("/users", data={"email": p.email, "password": p.password, "name": p.name})
        assert r.status_code == 201, r.text
        p.user_id, p.account_id = r.json()["user"]["id"], r.json()["account"]["id"]
        r = await c.post(
            "/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": APP_CLIENT,
                "username": p.email,
                "password": p.password,
            },
        )
        assert r.status_code == 200, r.text
        p.token = r.json()["access_token"]
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30, headers=p.auth) as c:
        r = await c.post(
            "/topup",
            data={"account_id": p.account_id, "amount": "50000", "currency": "GBP"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert r.status_code == 201, r.text
        r = await c.post(
            "/cards", data={"account_id": p.account_id}, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        assert r.status_code == 201, r.text
        card = r.json()["card"]
        p.card_id, p.pan, p.cvc = card["id"], card["pan"], card["cvc"]
        ISSUED.append((p.pan, p.cvc))
        month, year = (
            card["expiry"].split("/") if "/" in card["expiry"] else (card["expiry"][:2], card["expiry"][2:])
        )
        p.expiry = f"{year[-2:]}{month}"
    p.ids.update(account=p.account_id, card=p.card_id, user=p.user_id)
    return p


def authorisation(p: Person, amount: int = 1915, nid: str | None = None, **extra: Any) -> dict[str, Any]:
    """A 0100 for this person's card."""
    msg: dict[str, Any] = {
        "mti": "0100",
        "pan": p.pan,
        "expiry": p.expiry,
        "cvc": p.cvc,
        "processing_code": "000000",
        "amount": amount,
        "currency": "GBP",
        "stan": f"{secrets.randbelow(10**6):06d}",
        "rrn": f"{secrets.randbelow(10**12):012d}",
        "transmission_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "network_transaction_id": nid or f"SEC{secrets.token_hex(6).upper()}",
        "merchant": {
            "id": "BB0001",
            "name": "BRIGHTBIRD ESPRESSO",
            "mcc": "5814",
            "city": "London",
            "country": "GB",
        },
    }
    msg.update(extra)
    return msg


# The public surface, from the merged OpenAPI ------------------------------------------------------


@dataclass
class Operation:
    path: str
    method: str
    auth: str  # user | network | none
    params: list[dict[str, Any]]  # path, query and header parameters
    form: dict[str, Any] | None  # the form schema (properties, required), if the body is a form
    json_body: dict[str, Any] | None  # the JSON schema, if the body is JSON

    @property
    def label(self) -> str:
        return f"{self.method.upper()} {self.path}"

    def param_names(self, where: str) -> list[str]:
        return [p["name"] for p in self.params if p.get("in") == where]


def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def operations(doc: dict[str, Any]) -> list[Operation]:
    out = []
    for path, item in doc.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            security = op.get("security") or []
            names = {name for req in security for name in req}
            auth = "user" if "accessToken" in names else "network" if "networkKey" in names else "none"
            params = [resolve(doc, p) for p in [*shared, *op.get("parameters", [])]]
            content = resolve(doc, op.get("requestBody", {})).get("content", {})
            form = resolve(doc, content[FORM]["schema"]) if FORM in content else None
            if form is not None and "properties" in form:
                form = {**form, "properties": {k: resolve(doc, v) for k, v in form["properties"].items()}}
            body = resolve(doc, content[JSON]["schema"]) if JSON in content else None
            out.append(Operation(path, method, auth, params, form, body))
    return out


# Filling requests ------------------------------------------------------------------------------

KIND_BY_SEGMENT = {
    "accounts": "account",
    "cards": "card",
    "transactions": "transaction",
    "webhooks": "webhook",
    "devices": "device",
    "feed": "feed_item",
    "deliveries": "delivery",
    "users": "user",
    "pots": "pot",
    "deregister": "attachment",  # POST /attachment/deregister (form `id`)
}
# Form and query names that name an account under another name (pots and payments).
ACCOUNT_ALIASES = frozenset({"source_account_id", "destination_account_id", "current_account_id"})


def id_kind(op: Operation, name: str) -> str:
    """What a path/query/form parameter names: `card_id` a card; `{id}` after /cards/ a card too."""
    if name in ACCOUNT_ALIASES:
        return "account"
    if name == "external_id":  # a receipt's own id on /transaction-receipts, a transaction's elsewhere
        return "receipt" if "receipts" in op.path else "transaction"
    if name.endswith("_id") and name != "client_id":
        return name.removesuffix("_id")
    if name == "id":
        segments = [s for s in op.path.split("/") if s]
        index = segments.index("{id}") if "{id}" in segments else len(segments)
        before = segments[index - 1] if index else ""
        return KIND_BY_SEGMENT.get(before, before.rstrip("s"))
    return ""


def plausible(name: str, schema: dict[str, Any]) -> str:
    """A value a real client would send for a non-id field."""
    lowered = name.lower()
    fixed = {
        "amount": "1000",
        "currency": "GBP",
        "url": PUBLIC_HOOK,
        "platform": "apns",
        "token": secrets.token_hex(32),
        "type": "basic",
        "email": f"x{secrets.token_hex(4)}@example.com",
        "password": "correct horse battery",
        "name": "Mallory",
        "blocked_mccs": "5814",
        "atm_enabled": "true",
        "spend_limit_per_transaction": "1000",
        "spend_limit_per_day": "5000",
        "app_version": "1.0.0",
        "grant_type": "password",
        "client_id": APP_CLIENT,
        "goal_amount": "5000",
        "style": "beach_ball",
        "file_type": "image/png",
        "file_name": "receipt.png",
        "content_length": "100",
    }
    if lowered in fixed:
        return fixed[lowered]
    if "color" in lowered or "colour" in lowered:
        return "#FCF1EE"
    if "title" in lowered or "body" in lowered or lowered.startswith("metadata"):
        return "hello"
    if "url" in lowered:
        return "https://example.com/x.png"
    if lowered in ("since", "before"):
        return "2020-01-01T00:00:00Z"
    schema = schema or {}
    types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", []) if isinstance(s, dict)}
    if "integer" in types or "number" in types:
        return "60"
    if schema.get("enum"):
        return str(schema["enum"][0])
    kind = schema.get("type")
    if kind == "boolean":
        return "true"
    return "x"


def build(op: Operation, ids: dict[str, str], *, override: dict[str, str] | None = None) -> dict[str, Any]:
    """httpx request arguments for `op`, ids taken from `ids` (kind -> id), every other field plausible."""
    override = override or {}
    path = op.path
    for name in op.param_names("path"):
        kind = id_kind(op, name)
        value = override.get(name) or ids.get(kind) or f"{kind or 'x'}_{secrets.token_hex(8)}"
        path = path.replace("{" + name + "}", value)
    query: dict[str, str] = {}
    for p in op.params:
        if p.get("in") != "query":
            continue
        name = p["name"]
        kind = id_kind(op, name)
        if name in override:
            query[name] = override[name]
        elif kind and kind in ids:
            query[name] = ids[kind]
        elif p.get("required"):
            query[name] = plausible(name, p.get("schema", {}))
    headers: dict[str, str] = {"Idempotency-Key": uuid.uuid4().hex} if op.method != "get" else {}
    request: dict[str, Any] = {"method": op.method.upper(), "url": path, "params": query, "headers": headers}
    if op.form is not None:
        data = {}
        if not op.form.get("properties") and op.form.get("additionalProperties"):
            data[FREE_FORM_FIELD] = override.get(FREE_FORM_FIELD, "hello")  # metadata[key]=value style
        for name, schema in (op.form.get("properties") or {}).items():
            kind = id_kind(op, name)
            if name in override:
                data[name] = override[name]
            elif kind and kind in ids:
                data[name] = ids[kind]
            else:
                data[name] = plausible(name, schema)
        request["data"] = data
    return request


def form_text_fields(op: Operation) -> list[str]:
    """The form fields a client types text into (not ids, which `build` fills from the owner)."""
    if op.form is None:
        return []
    out = [FREE_FORM_FIELD] if not op.form.get("properties") and op.form.get("additionalProperties") else []
    for name, schema in (op.form.get("properties") or {}).items():
        types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", []) if isinstance(s, dict)}
        if "string" in types or not types - {None}:
            out.append(name)
    return out


def is_typed_error(r: httpx.Response) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    return (isinstance(body, dict) and isinstance(body.get("code"), str) and "." in body["code"]) or (
        isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str)
    )
