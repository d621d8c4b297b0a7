"""The route table: path prefix + methods -> upstream, auth, timeout, rate-limit class. Pure.

The table is declared in `routes.toml`, parsed and validated once at start-up
(`parse_table`), and answers one question per request: which route serves this
method and path? Matching is by the longest prefix, on whole path segments:
`/accounts` matches `/accounts` and `/accounts/acc_1`, never `/accountsX`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

LOCAL = "gateway"  # served by the gateway itself (ops page, API docs, health), not proxied
UNLIMITED = "none"  # rate-limit class meaning "no limit"
AUTH_KINDS = ("user", "none", "network")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_TIMEOUT = 60.0
# Who is refused first when the bank is past capacity (decision 0036): app traffic, then card-network
# authorisations; money-releasing and settling messages (reversals, advices, clearing) never.
PRIORITIES = ("critical", "network", "app")
MAX_BODY_CEILING = 64 * 1024 * 1024  # a route's own body limit (max_body) is at most this
_ROUTE_KEYS = frozenset(
    {"prefix", "methods", "upstream", "auth", "timeout", "rate_limit", "priority", "max_body"}
)
_DEFAULT_KEYS = frozenset({"timeout", "rate_limit", "priority"})


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    methods: frozenset[str]
    upstream: str
    auth: str  # one of AUTH_KINDS
    timeout: float  # seconds: the deadline the gateway gives the upstream call
    rate_limit: str  # a class of GatewaySettings.rate_limits, or UNLIMITED
    number: int = 0  # position in the file, 1-based, for messages
    priority: str = "app"  # one of PRIORITIES
    max_body: int | None = None  # this route's request body limit in bytes (None: the gateway's own)

    @property
    def path(self) -> str:
        """The metrics label (shared.web reads `scope["route"].path`)."""
        return self.prefix

    @property
    def local(self) -> bool:
        return self.upstream == LOCAL

    def __str__(self) -> str:
        return f"route #{self.number} ({self.prefix})"


@dataclass(frozen=True, slots=True)
class PrefixGroup:
    """What a path under one prefix can reach, by method: the prefix's own routes, and for other
    methods the routes of the shorter prefixes it lies under; and the Allow header for a 405."""

    by_method: dict[str, Route]
    allow: str


class RouteTableError(ValueError):
    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"invalid route table {source}:\n" + "\n".join(f"  {p}" for p in self.problems))


class RouteTable:
    """A request goes to the route with the longest prefix that matches its path and allows its
    method. A path that some prefix matches but no route allows the method of is a 405."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        own: dict[str, dict[str, Route]] = {}
        for route in self.routes:
            for method in route.methods:
                own.setdefault(route.prefix, {})[method] = route
        self._groups = {}
        for prefix in own:
            chain: dict[str, Route] = {}
            for outer in sorted((p for p in own if _contains(p, prefix)), key=len):
                chain.update(own[outer])  # longer prefixes override shorter ones
            allow = ", ".join(m for m in METHODS if m in chain)
            self._groups[prefix] = PrefixGroup(chain, allow)
        self._depth = max((r.prefix.count("/") for r in self.routes), default=0)

    def match(self, path: str) -> PrefixGroup | None:
        """What the longest prefix that `path` starts with (segment by segment) can reach."""
        # Only the first `depth` segments can be part of a prefix: look at those, longest first.
        ends: list[int] = []
        pos = 0
        for _ in range(self._depth):
            pos = path.find("/", pos + 1)
            if pos < 0:
                ends.append(len(path))
                break
            ends.append(pos)
        for end in reversed(ends):
            group = self._groups.get(path[:end])
            if group is not None:
                return group
        return None

    def route_for(self, method: str, path: str) -> Route | None:
        group = self.match(path)
        return None if group is None else group.by_method.get(method)

    def upstreams(self) -> set[str]:
        return {r.upstream for r in self.routes if not r.local}


def parse_table(
    text: str,
    *,
    upstreams: Collection[str],
    rate_limits: Collection[str],
    source: str = "routes.toml",
) -> RouteTable:
    """Parse and validate a route table; raise RouteTableError listing every problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RouteTableError(source, [f"not valid TOML: {exc}"]) from None
    problems: list[str] = []
    unknown = set(doc) - {"defaults", "route"}
    if unknown:
        problems.append(f"unknown top-level keys {sorted(unknown)} (expected [defaults] and [[route]])")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append("[defaults] must be a table")
        defaults = {}
    elif set(defaults) - _DEFAULT_KEYS:
        problems.append(f"[defaults]: unknown keys {sorted(set(defaults) - _DEFAULT_KEYS)}")
    entries = doc.get("route", [])
    if not isinstance(entries, list) or not entries:
        problems.append("no routes: declare them as [[route]] tables")
        entries = []
    routes = []
    for number, entry in enumerate(entries, start=1):
        route = _parse_route(number, entry, defaults, upstreams, rate_limits, problems)
        if route is not None:
            routes.append(route)
    problems.extend(_overlaps(routes))
    if problems:
        raise RouteTableError(source, problems)
    return RouteTable(routes)


def _parse_route(
    number: int,
    entry: Any,
    defaults: dict[str, Any],
    upstreams: Collection[str],
    rate_limits: Collection[str],
    problems: list[str],
) -> Route | None:
    if not isinstance(entry, dict):
        problems.append(f"route #{number}: must be a table of {sorted(_ROUTE_KEYS)}")
        return None
    prefix = entry.get("prefix")
    name = f"route #{number} ({prefix})" if isinstance(prefix, str) else f"route #{number}"
    before = len(problems)

    def bad(message: str) -> None:
        problems.append(f"{name}: {message}")

    if set(entry) - _ROUTE_KEYS:
        bad(f"unknown keys {sorted(set(entry) - _ROUTE_KEYS)} (allowed: {sorted(_ROUTE_KEYS)})")
    for key in ("prefix", "methods", "upstream", "auth"):
        if key not in entry:
            bad(f"missing {key!r}")
    if "prefix" in entry:
        problem = _prefix_problem(prefix)
        if problem:
            bad(problem)
    methods = entry.get("methods")
    if "methods" in entry:
        if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
            bad(f"methods must be a non-empty list of {', '.join(METHODS)}")
        else:
            wrong = [m for m in methods if m not in METHODS]
            if wrong:
                bad(f"bad method(s) {wrong}: use upper case, one of {', '.join(METHODS)}")
            if len(set(methods)) != len(methods):
                bad("a method is listed twice")
    upstream = entry.get("upstream")
    if "upstream" in entry and upstream not in upstreams:
        bad(f"unknown upstream {upstream!r} (known: {', '.join(sorted(upstreams))})")
    auth = entry.get("auth")
    if "auth" in entry and auth not in AUTH_KINDS:
        bad(f"auth must be one of {', '.join(AUTH_KINDS)} (got {auth!r})")
    timeout = entry.get("timeout", defaults.get("timeout"))
    if timeout is None:
        bad("missing 'timeout' (and no [defaults] timeout)")
    elif isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        bad(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}] (got {timeout!r})")
    rate_limit = entry.get("rate_limit", defaults.get("rate_limit"))
    classes = {*rate_limits, UNLIMITED}
    if rate_limit is None:
        bad("missing 'rate_limit' (and no [defaults] rate_limit)")
    elif rate_limit not in classes:
        bad(f"unknown rate_limit class {rate_limit!r} (known: {', '.join(sorted(classes))})")
    priority = entry.get("priority", defaults.get("priority", "app"))
    if priority not in PRIORITIES:
        bad(f"priority must be one of {', '.join(PRIORITIES)} (got {priority!r})")
    max_body = entry.get("max_body")
    if max_body is not None and (
        isinstance(max_body, bool) or not isinstance(max_body, int) or not 0 < max_body <= MAX_BODY_CEILING
    ):
        bad(f"max_body must be a number of bytes in (0, {MAX_BODY_CEILING}] (got {max_body!r})")
    if len(problems) > before:
        return None
    assert isinstance(prefix, str) and isinstance(methods, list) and isinstance(upstream, str)
    assert isinstance(auth, str) and isinstance(rate_limit, str) and timeout is not None
    return Route(
        prefix, frozenset(methods), upstream, auth, float(timeout), rate_limit, number, priority, max_body
    )


def _prefix_problem(prefix: Any) -> str | None:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        return f"prefix must be a string starting with '/' (got {prefix!r})"
    if prefix == "/":
        return "prefix '/' would route everything; list the public paths instead"
    if prefix.endswith("/"):
        return "prefix must not end with '/' (prefixes match whole segments)"
    if any(c in prefix for c in "?#%\\") or any(c.isspace() for c in prefix):
        return "prefix must be a plain path (no query, fragment, escapes or spaces)"
    segments = prefix[1:].split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "prefix must not contain empty, '.' or '..' segments"
    if segments[0] == "internal":
        return "/internal/* is for service-to-service calls and is never routed"
    return None


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer + "/")


def _overlaps(routes: Sequence[Route]) -> list[str]:
    problems = []
    for i, a in enumerate(routes):
        for b in routes[i + 1 :]:
            shared = a.methods & b.methods
            if not shared:
                continue
            both = ", ".join(m for m in METHODS if m in shared)
            if a.prefix == b.prefix:
                problems.append(f"{b}: {both} on {b.prefix} is already routed by {a}")
            elif (
                _contains(a.prefix, b.prefix) or _contains(b.prefix, a.prefix)
            ) and a.upstream != b.upstream:
                outer, inner = (a, b) if _contains(a.prefix, b.prefix) else (b, a)
                problems.append(
                    f"{inner}: overlaps {outer} for {both} but goes to {inner.upstream!r}, "
                    f"not {outer.upstream!r}; give them disjoint methods or the same upstream"
                )
    return problems
