"""One OpenAPI document for the whole public API, merged from every upstream's /openapi.json.

Each upstream's document is fetched lazily and cached; only the operations the
route table exposes (path and method routed to that very upstream) are kept, so
/internal/* and anything unrouted never shows. Components are merged (a name
that means different things in two services is renamed `<service>_<name>`) and
pruned to what the kept operations reference. An upstream that does not answer
is left out, and the document's description says so.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from services.gateway.routes import LOCAL, RouteTable
from shared.http import ServiceClient, raise_for_upstream_error

log = logging.getLogger("gateway.openapi")

OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_REF_PREFIX = "#/components/"
SECURITY_SCHEMES = {
    "accessToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from /oauth2/token: `Authorization: Bearer <token>`.",
    },
    "networkKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-network-key",
        "description": "The card network's key (card-network interface only).",
    },
}
_SECURITY_BY_AUTH: dict[str, list[dict[str, list[str]]]] = {
    "user": [{"accessToken": []}],
    "network": [{"networkKey": []}],
}


def exposed_operations(doc: Mapping[str, Any], table: RouteTable, upstream: str) -> dict[str, Any]:
    """The paths of one upstream's document that the route table sends to that upstream."""
    kept: dict[str, Any] = {}
    for path, item in (doc.get("paths") or {}).items():
        group = table.match(path) if isinstance(path, str) and isinstance(item, dict) else None
        if group is None:
            continue
        operations = {}
        for method in OPERATIONS:
            route = group.by_method.get(method.upper())
            if method in item and route is not None and route.upstream == upstream:
                operation = dict(item[method])
                if route.auth in _SECURITY_BY_AUTH:
                    operation["security"] = _SECURITY_BY_AUTH[route.auth]
                operations[method] = operation
        if operations:
            shared = {k: v for k, v in item.items() if k not in OPERATIONS}
            kept[path] = {**shared, **operations}
    return kept


def _rewrite(node: Any, renames: Mapping[str, str]) -> Any:
    if not renames:
        return node
    if isinstance(node, dict):
        return {
            k: renames.get(v, v) if k == "$ref" and isinstance(v, str) else _rewrite(v, renames)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v, renames) for v in node]
    return node


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            found.add(ref)
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def merge(
    docs: Mapping[str, Mapping[str, Any]],
    table: RouteTable,
    *,
    missing: Mapping[str, str] | None = None,
    title: str = "Bank API",
) -> dict[str, Any]:
    """Merge upstream documents (by upstream name) into one, keeping only exposed operations."""
    paths: dict[str, Any] = {}
    components: dict[str, dict[str, Any]] = {}
    for upstream in sorted(docs):
        doc = docs[upstream]
        theirs = {s: dict(e) for s, e in (doc.get("components") or {}).items() if isinstance(e, dict)}
        renames = _renames(upstream, theirs, components)
        for path, item in _rewrite(exposed_operations(doc, table, upstream), renames).items():
            paths.setdefault(path, {}).update(item)
        for section, entries in theirs.items():
            for name, value in entries.items():
                new = renames.get(f"{_REF_PREFIX}{section}/{name}", f"{_REF_PREFIX}{section}/{name}")
                components.setdefault(section, {})[new.rsplit("/", 1)[1]] = _rewrite(value, renames)
    components = _reachable(paths, components)
    components["securitySchemes"] = {**components.get("securitySchemes", {}), **SECURITY_SCHEMES}
    description = (
        "The bank's public HTTP API (Mondo/Monzo-compatible), served through the gateway. "
        'Request bodies are form-encoded; errors are `{"code", "message"}`.'
    )
    if missing:
        down = ", ".join(f"{name} ({why})" for name, why in sorted(missing.items()))
        description += (
            f"\n\n**Incomplete:** these services did not answer, so their paths are missing: {down}."
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1.0", "description": description},
        "paths": dict(sorted(paths.items())),
        "components": components,
    }


def _renames(
    upstream: str, theirs: Mapping[str, Mapping[str, Any]], merged: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """Component refs of `upstream` that must be renamed because the merged name means something else.

    Repeated to a fixed point: a schema identical in text but referring to a renamed one differs too."""
    renames: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for section, entries in theirs.items():
            for name, value in entries.items():
                ref = f"{_REF_PREFIX}{section}/{name}"
                existing = merged.get(section, {}).get(name)
                if ref in renames or existing is None or existing == _rewrite(value, renames):
                    continue
                new_name, n = f"{upstream}_{name}", 2
                while new_name in merged.get(section, {}) or new_name in entries:
                    new_name, n = f"{upstream}_{name}_{n}", n + 1
                renames[ref] = f"{_REF_PREFIX}{section}/{new_name}"
                changed = True
    return renames


def _reachable(paths: Mapping[str, Any], components: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Only the components the kept paths use, directly or through other components."""
    pending: set[str] = set()
    _refs(paths, pending)
    seen: set[str] = set()
    kept: dict[str, dict[str, Any]] = {}
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        section, _, name = ref[len(_REF_PREFIX) :].partition("/")
        value = components.get(section, {}).get(name)
        if value is None:
            continue
        kept.setdefault(section, {})[name] = value
        _refs(value, pending)
    return {section: dict(sorted(entries.items())) for section, entries in sorted(kept.items())}


class ApiDocs:
    """The merged document, built on request from per-upstream documents cached for a while."""

    def __init__(
        self,
        table: RouteTable,
        clients: Mapping[str, ServiceClient],
        *,
        cache_seconds: float = 60.0,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.clients = clients
        self.cache_seconds = cache_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self.local: Callable[[], dict[str, Any]] | None = None  # the gateway's own routes
        # upstream -> (expires at, document or None, why it is missing)
        self._cache: dict[str, tuple[float, dict[str, Any] | None, str]] = {}
        self._lock = asyncio.Lock()

    async def _fetch(self, upstream: str) -> tuple[float, dict[str, Any] | None, str]:
        try:
            resp = await self.clients[upstream].get("/openapi.json", timeout=2.0)
            doc = raise_for_upstream_error(resp, upstream).json()
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except Exception as exc:
            log.warning("no OpenAPI document from %s: %s", upstream, exc)
            reason = getattr(exc, "code", None) or type(exc).__name__
            return self._clock() + self.retry_seconds, None, str(reason)
        return self._clock() + self.cache_seconds, doc, ""

    async def document(self) -> dict[str, Any]:
        upstreams = sorted(set(self.table.upstreams()) & set(self.clients))
        async with self._lock:  # one fetch per upstream at a time, however many readers
            now = self._clock()
            stale = [u for u in upstreams if u not in self._cache or self._cache[u][0] <= now]
            fetched = await asyncio.gather(*(self._fetch(u) for u in stale))
            self._cache.update(zip(stale, fetched, strict=True))
        docs: dict[str, dict[str, Any]] = {}
        missing: dict[str, str] = {}
        for upstream in upstreams:
            _, doc, why = self._cache[upstream]
            if doc is None:
                missing[upstream] = why
            else:
                docs[upstream] = doc
        if self.local is not None:
            docs[LOCAL] = copy.deepcopy(self.local())
        return merge(docs, self.table, missing=missing)
