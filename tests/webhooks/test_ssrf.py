"""Receivers that must never be called: refused at registration (typed 400) and, after DNS resolution,
at send time (a failed attempt; nothing connects)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.webhooks import ssrf
from tests.support.waiting import eventually
from tests.webhooks.conftest import Hooks, Receiver, running_webhooks

# (address form, url host, the typed error's detail)
FORBIDDEN = [
    ("loopback", "127.0.0.2", "loopback"),
    ("loopback v6", "[::1]", "loopback"),
    ("private 10/8", "10.0.0.1", "private"),
    ("private 172.16/12", "172.16.5.4", "private"),
    ("private 192.168/16", "192.168.1.1", "private"),
    ("link-local / cloud metadata", "169.254.169.254", "link_local"),
    ("CGNAT", "100.64.0.1", "cgnat"),
    ("multicast", "224.0.0.1", "multicast"),
    ("multicast v6", "[ff02::1]", "multicast"),
    ("reserved", "240.0.0.1", "reserved"),
    ("broadcast", "255.255.255.255", "reserved"),
    ("unspecified", "0.0.0.0", "unspecified"),
    ("IPv6 unique local", "[fd12:3456::1]", "unique_local"),
    ("IPv6 link-local", "[fe80::1]", "link_local"),
    ("IPv4-mapped loopback", "[::ffff:127.0.0.2]", "ipv4_mapped_loopback"),
    ("IPv4-mapped private", "[::ffff:10.1.2.3]", "ipv4_mapped_private"),
    ("IPv4-mapped metadata", "[::ffff:169.254.169.254]", "ipv4_mapped_link_local"),
    ("NAT64 of private", "[64:ff9b::a00:1]", "ipv4_mapped_private"),
    ("6to4 of loopback", "[2002:7f00:2::1]", "ipv4_mapped_loopback"),
]
IDS = [f[0] for f in FORBIDDEN]


@pytest.mark.parametrize(("form", "host", "reason"), FORBIDDEN, ids=IDS)
def test_address_forms_are_classified(form: str, host: str, reason: str) -> None:
    ip = ipaddress.ip_address(host.strip("[]"))
    assert ssrf.address_problem(ip) == reason
    with pytest.raises(ssrf.UrlRefused) as refused:
        ssrf.vet(ip, ())
    assert refused.value.reason == f"forbidden_address.{reason}"


def test_public_addresses_and_the_allow_list_pass() -> None:
    for public in ("8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert ssrf.address_problem(ipaddress.ip_address(public)) is None
    allow = ssrf.parse_networks(["127.0.0.1/32"])
    ssrf.vet(ipaddress.ip_address("127.0.0.1"), allow)
    ssrf.vet(ipaddress.ip_address("::ffff:127.0.0.1"), allow)
    with pytest.raises(ssrf.UrlRefused):
        ssrf.vet(ipaddress.ip_address("127.0.0.2"), allow)


@pytest.mark.parametrize(("form", "host", "reason"), FORBIDDEN, ids=IDS)
async def test_registration_refuses_each_form(hooks: Hooks, form: str, host: str, reason: str) -> None:
    ada = await hooks.customer()
    r = await hooks.http.post(
        "/webhooks",
        data={"account_id": ada.account_id, "url": f"http://{host}/hook"},
        headers=hooks.auth(ada),
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == f"bad_request.forbidden_address.{reason}"
    assert await hooks.rows("SELECT id FROM webhooks.webhooks") == []


async def test_registration_refuses_names_that_resolve_inside(hooks: Hooks) -> None:
    ada = await hooks.customer()
    for url, code in [
        ("http://2130706434/hook", "bad_request.forbidden_address.loopback"),  # 127.0.0.2, decimal
        ("http://0x7f000002/hook", "bad_request.forbidden_address.loopback"),  # and hex
        ("http://no-such-host.invalid/hook", "bad_request.unresolvable_host"),
        ("ftp://example.com/hook", "bad_request.bad_url"),
        ("http://user:pw@8.8.8.8/hook", "bad_request.bad_url"),
        ("not a url", "bad_request.bad_url"),
    ]:
        r = await hooks.http.post(
            "/webhooks", data={"account_id": ada.account_id, "url": url}, headers=hooks.auth(ada)
        )
        assert (r.status_code, r.json()["code"]) == (400, code), url


async def test_production_mode_wants_https(db: Any, settings: Any) -> None:
    async with running_webhooks(db, settings, allow_http=False) as hooks:
        ada = await hooks.customer()
        r = await hooks.http.post(
            "/webhooks",
            data={"account_id": ada.account_id, "url": "http://8.8.8.8/hook"},
            headers=hooks.auth(ada),
        )
        assert (r.status_code, r.json()["code"]) == (400, "bad_request.insecure_url")


async def test_send_time_refuses_what_a_name_resolves_to_now(
    hooks: Hooks, receivers: Callable[..., Awaitable[Receiver]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: each name resolved to a public address when it was registered; when the event is
    sent it resolves to a forbidden one. Every attempt fails as refused and nothing is connected to."""
    now_resolves: dict[str, str] = {}
    real_resolve = ssrf.resolve

    async def rebinding(host: str, port: int) -> list[ssrf.IP]:
        if host.endswith(".rebind.test"):
            answer = now_resolves.get(host, "93.184.216.34")
            return [ipaddress.ip_address(answer)]
        return await real_resolve(host, port)

    monkeypatch.setattr(ssrf, "resolve", rebinding)
    ada = await hooks.customer()
    webhooks = {}
    for i, (_, host, reason) in enumerate(FORBIDDEN):
        name = f"h{i}.rebind.test"
        webhook = await hooks.register(ada, f"http://{name}/hook")
        webhooks[webhook["id"]] = reason
        now_resolves[name] = host.strip("[]")
    receiver = await receivers()  # the allowed loopback address: still delivered
    control = await hooks.register(ada, receiver.url)

    await hooks.producer.emit(ada)
    await eventually(lambda: len(receiver.requests) == 1, what="the control delivery")

    async def every_one_refused() -> bool:
        rows = await hooks.rows("SELECT webhook_id, error, status_code FROM webhooks.attempts")
        return {r["webhook_id"] for r in rows} >= {*webhooks, control["id"]}

    await eventually(every_one_refused, what="an attempt per forbidden receiver")
    rows = await hooks.rows("SELECT webhook_id, error, status_code FROM webhooks.attempts WHERE attempt = 1")
    by_webhook = {r["webhook_id"]: r for r in rows}
    for webhook_id, reason in webhooks.items():
        row = by_webhook[webhook_id]
        assert row["status_code"] is None
        assert row["error"].startswith(f"refused.forbidden_address.{reason}:"), row
    control_rows = await hooks.rows("SELECT * FROM webhooks.attempts WHERE webhook_id = :w", w=control["id"])
    assert [(r["attempt"], r["status_code"]) for r in control_rows] == [(1, 200)]
    assert len(receiver.requests) == 1
