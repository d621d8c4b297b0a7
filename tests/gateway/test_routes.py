"""The route table on its own: parsing, validation messages, longest-prefix matching on segments."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.app import load_table
from services.gateway.config import GatewaySettings
from services.gateway.routes import RouteTable, RouteTableError, parse_table
from shared.config import SERVICES

CLASSES = ("default", "auth")


def table(text: str) -> RouteTable:
    return parse_table(text, upstreams=SERVICES, rate_limits=CLASSES, source="test.toml")


def problems(text: str) -> list[str]:
    with pytest.raises(RouteTableError) as info:
        table(text)
    assert str(info.value).startswith("invalid route table test.toml:")
    return info.value.problems


def route(prefix: str, methods: str = '"GET"', upstream: str = "accounts", **extra: str) -> str:
    lines = [
        "[[route]]",
        f'prefix = "{prefix}"',
        f"methods = [{methods}]",
        f'upstream = "{upstream}"',
        'auth = "none"',
        "timeout = 1.0",
        'rate_limit = "default"',
    ]
    for key, value in extra.items():
        lines = [line for line in lines if not line.startswith(f"{key} =")] + [f"{key} = {value}"]
    return "\n".join(lines) + "\n"


def test_the_shipped_table_is_valid_and_covers_the_public_api() -> None:
    shipped = load_table(GatewaySettings())
    expect = {
        ("GET", "/ping/whoami"): ("accounts", "user"),
        ("POST", "/oauth2/token"): ("accounts", "none"),
        ("GET", "/oauth2/authorize"): ("accounts", "none"),
        ("GET", "/oauth2/jwks.json"): ("accounts", "none"),
        ("POST", "/users"): ("accounts", "none"),
        ("GET", "/accounts"): ("accounts", "user"),
        ("GET", "/balance"): ("accounts", "user"),
        ("POST", "/topup"): ("accounts", "user"),
        ("GET", "/pots"): ("accounts", "user"),
        ("PUT", "/pots/pot_1/deposit"): ("accounts", "user"),
        ("DELETE", "/pots/pot_1"): ("accounts", "user"),
        ("POST", "/payments"): ("accounts", "user"),
        ("POST", "/attachment/upload"): ("transactions", "user"),
        ("GET", "/attachment/files/file_1/a.png"): ("transactions", "user"),
        ("PUT", "/attachment/blobs/file_1/a.png"): ("transactions", "none"),
        ("PUT", "/transaction-receipts"): ("transactions", "user"),
        ("GET", "/cards/card_1"): ("cards", "user"),
        ("GET", "/transactions/tx_1"): ("transactions", "user"),
        ("PATCH", "/transactions/tx_1"): ("transactions", "user"),
        ("POST", "/webhooks"): ("webhooks", "user"),
        ("POST", "/feed"): ("notifications", "user"),
        ("POST", "/devices"): ("notifications", "user"),
        ("POST", "/network/authorisations"): ("cards", "network"),
        ("GET", "/ops/health"): ("gateway", "none"),
        ("GET", "/docs"): ("gateway", "none"),
        ("GET", "/openapi.json"): ("gateway", "none"),
    }
    for (method, path), (upstream, auth) in expect.items():
        found = shipped.route_for(method, path)
        assert found is not None, (method, path)
        assert (found.upstream, found.auth) == (upstream, auth), (method, path)
    for path in ("/internal/holds", "/oauth2/revocations", "/users/user_1", "/ping"):
        assert shipped.route_for("GET", path) is None, path
    # Attachments are up to 10 MB: their upload route has a body limit of its own, no other route does.
    blobs = shipped.route_for("PUT", "/attachment/blobs/file_1/a.png")
    assert blobs is not None and blobs.max_body == 10 * 1024 * 1024
    assert {r.prefix for r in shipped.routes if r.max_body} == {"/attachment/blobs"}
    assert problems(route("/big", max_body="0") + route("/huge", max_body="true")) == [
        "route #1 (/big): max_body must be a number of bytes in (0, 67108864] (got 0)",
        "route #2 (/huge): max_body must be a number of bytes in (0, 67108864] (got True)",
    ]


def test_longest_prefix_on_whole_segments() -> None:
    t = table(
        route("/a")
        + route("/a/b", upstream="accounts", timeout="2.0")
        + route("/a/b/c", methods='"POST"', upstream="cards")
    )
    assert t.route_for("GET", "/a").timeout == 1.0  # type: ignore[union-attr]
    assert t.route_for("GET", "/a/x").timeout == 1.0  # type: ignore[union-attr]
    assert t.route_for("GET", "/a/b").timeout == 2.0  # type: ignore[union-attr]
    assert t.route_for("GET", "/a/b/").timeout == 2.0  # type: ignore[union-attr]
    assert t.route_for("GET", "/a/b/zz/yy").timeout == 2.0  # type: ignore[union-attr]
    assert t.route_for("POST", "/a/b/c/d").upstream == "cards"  # type: ignore[union-attr]
    # GET under /a/b/c: /a/b/c has no GET, so the next longest prefix that has one serves it
    assert t.route_for("GET", "/a/b/c/d").prefix == "/a/b"  # type: ignore[union-attr]
    for path in ("/ab", "/a/bc", "/", "", "/b/a", "/A"):
        assert t.match(path) is None or t.match(path) is t.match("/a"), path
    assert t.match("/ab") is None and t.match("/A") is None
    assert t.match("/a/bc") is t.match("/a")
    group = t.match("/a/b/c")
    assert group is not None and group.allow == "GET, POST"
    assert t.route_for("DELETE", "/a/b/c") is None


def test_every_problem_is_reported_naming_the_route() -> None:
    found = problems(
        route("/ok")
        + route("/typo", upstream="acounts")
        + route("/verbs", methods='"get", "FETCH"')
        + route("/auth", auth='"password"')
        + route("/cls", rate_limit='"platinum"')
        + route("/slow", timeout="0")
        + "[[route]]\nprefix = 'nope'\nmethods = ['GET']\nupstream = 'cards'\nauth = 'none'\n"
        + "[[route]]\nmethods = ['GET']\nupstream = 'cards'\nauth = 'none'\ncolour = 'red'\n"
    )
    text = "\n".join(found)
    assert "route #2 (/typo): unknown upstream 'acounts'" in text
    assert "route #3 (/verbs): bad method(s) ['get', 'FETCH']" in text
    assert "route #4 (/auth): auth must be one of user, none, network" in text
    assert "route #5 (/cls): unknown rate_limit class 'platinum'" in text
    assert "route #6 (/slow): timeout must be a number of seconds" in text
    assert "route #7 (nope): prefix must be a string starting with '/'" in text
    assert "route #7 (nope): missing 'timeout'" in text
    assert "route #8: unknown keys ['colour']" in text
    assert "route #8: missing 'prefix'" in text
    assert len(found) == 12  # routes #7 and #8 also lack timeout and rate_limit


def test_overlapping_prefixes_for_different_upstreams_are_refused() -> None:
    found = problems(
        route("/cards", methods='"GET", "POST"', upstream="cards") + route("/cards/x", upstream="accounts")
    )
    assert found == [
        "route #2 (/cards/x): overlaps route #1 (/cards) for GET but goes to 'accounts', not 'cards'; "
        "give them disjoint methods or the same upstream"
    ]
    found = problems(route("/feed", upstream="notifications") + route("/feed", methods='"GET", "POST"'))
    assert found == ["route #2 (/feed): GET on /feed is already routed by route #1 (/feed)"]
    # Disjoint methods, or the same upstream, are fine; so is a shared name without a segment boundary.
    table(route("/feed", upstream="notifications") + route("/feed", methods='"POST"', upstream="cards"))
    table(route("/cards", upstream="cards") + route("/cards/x", upstream="cards", timeout="9.0"))
    table(route("/card", upstream="cards") + route("/cards", upstream="accounts"))


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("/", "would route everything"),
        ("/accounts/", "must not end with '/'"),
        ("/a//b", "empty, '.' or '..' segments"),
        ("/a/../internal", "empty, '.' or '..' segments"),
        ("/a?x=1", "plain path"),
        ("/a%2Fb", "plain path"),
        ("/internal", "never routed"),
        ("/internal/holds", "never routed"),
    ],
)
def test_bad_prefixes(prefix: str, message: str) -> None:
    (found,) = problems(route(prefix))
    assert found.startswith(f"route #1 ({prefix}): ") and message in found


def test_malformed_files() -> None:
    assert "not valid TOML" in problems("[[route]\nprefix=")[0]
    assert problems("") == ["no routes: declare them as [[route]] tables"]
    assert "route #1: must be a table" in problems("route = [1]")[0]
    assert "unknown top-level keys ['routes']" in problems('[[routes]]\nprefix = "/a"\n' + route("/b"))[0]
    assert "methods must be a non-empty list" in problems(route("/a", methods=""))[0]
    assert "listed twice" in problems(route("/a", methods='"GET", "GET"'))[0]
    assert "[defaults]: unknown keys ['auth']" in problems('[defaults]\nauth = "none"\n' + route("/a"))[0]


def test_defaults_fill_timeout_and_rate_limit() -> None:
    text = '[defaults]\ntimeout = 3\nrate_limit = "auth"\n[[route]]\nprefix = "/a"\nmethods = ["GET"]\n'
    t = table(text + 'upstream = "cards"\nauth = "none"\n')
    r = t.route_for("GET", "/a")
    assert r is not None and r.timeout == 3.0 and r.rate_limit == "auth"


def test_start_up_stops_with_the_message(tmp_path: Path) -> None:
    bad = tmp_path / "routes.toml"
    bad.write_text(route("/accounts", upstream="nowhere"))
    with pytest.raises(SystemExit) as info:
        load_table(GatewaySettings(routes_file=bad))
    assert f"invalid route table {bad}" in str(info.value)
    assert "route #1 (/accounts): unknown upstream 'nowhere'" in str(info.value)
    with pytest.raises(SystemExit, match="cannot read the route table"):
        load_table(GatewaySettings(routes_file=tmp_path / "missing.toml"))
    # The rate-limit classes come from the settings: a table naming a class they lack does not start.
    with pytest.raises(SystemExit, match=r"route #1 \(/ping/whoami\): unknown rate_limit class 'default'"):
        load_table(GatewaySettings(rate_limits={}))
