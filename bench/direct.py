"""What shared/direct.py saves: CPU per request through FastAPI's router and middlewares, against direct
dispatch, for a route shaped like cards' POST /network/authorisations, in process (no sockets).

    .venv/bin/python -m bench.direct [--requests 5000]

The app is built by shared.web.create_app as every service's is (request context, error handlers),
with 25 other routes in front of the hot one, as cards has. Prints microseconds of CPU per request for
each, twice, alternating. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import MutableMapping, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from shared.web import create_app

PATH = "/network/authorisations"
BODY = b'{"mti":"0100","network_transaction_id":"NTX1"}'


def build(direct: bool) -> FastAPI:
    api = APIRouter()
    for i in range(25):

        @api.get(f"/other/{i}/{{key}}")
        async def other(key: str) -> dict[str, str]:
            return {"key": key}

    @api.post(PATH, response_class=Response)
    async def authorise(request: Request) -> Response:
        await request.body()
        return Response(b'{"response_code":"00"}', media_type="application/json")

    return create_app("bench-direct", routers=[api], direct_routes=[("POST", PATH)] if direct else ())


async def cpu_per_request(app: FastAPI, requests: int) -> float:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8002),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(200):  # warm-up
        await app(dict(scope), receive, send)
    started = time.process_time()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    seconds = time.process_time() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected answers: {sorted(set(statuses))}")
    return seconds / requests * 1e6


async def main_async(requests: int) -> None:
    for direct in (False, True, False, True):
        us = await cpu_per_request(build(direct), requests)
        print(f"{'direct dispatch' if direct else 'FastAPI router '}: {us:6.0f} µs of CPU per request")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    asyncio.run(main_async(parser.parse_args(argv).requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
