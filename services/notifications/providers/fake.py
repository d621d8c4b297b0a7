"""A local stand-in for APNs and FCM: a real HTTP server speaking both protocols, for `bank up` and tests.

    python -m services.notifications.providers.fake --port 8010

Served on one port by providers/fake_server.py: HTTP/2 (h2c, prior knowledge, which is what the push
client speaks to an http:// URL) and HTTP/1.1 (the token endpoint, browsers).

* APNs: `POST /3/device/{token}`. Checks what Apple checks (HTTP/2, a bearer ES256 provider token with
  kid and iss, apns-topic, apns-push-type, a hex device token, the 4 KiB payload limit) and answers as
  Apple does: 200 with `apns-id`, or `{"reason": …}` (410 adds `timestamp`).
* FCM HTTP v1: `POST /v1/projects/{project}/messages:send`, bearer from `POST /token` (the OAuth2
  jwt-bearer grant a service account uses). Answers `{"name": …}` or a google.rpc Status error.
* `GET /_fake/received` lists what arrived (JSON); `GET /` shows it as a page that refreshes itself.
* `POST /_fake/script` queues answers for a device token (or "*" for any):
  `{"token": "…", "responses": [{"status": 410, "reason": "Unregistered"}, {"status": 503,
  "retry_after": 1}, {"status": 200, "delay": 30}]}`: each request for that token takes the next one
  (after it, 200s). `reason` is APNs' reason or FCM's errorCode; `delay` holds the answer that long.
* `DELETE /_fake/received` forgets everything received and scripted.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import itertools
import json
import logging
import re
import secrets
import signal
import time
import uuid
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.notifications.providers import PAYLOAD_LIMIT
from services.notifications.providers.fake_server import FakeHttpServer

log = logging.getLogger("services.notifications.fake")

HEX_TOKEN = re.compile(r"^[0-9a-fA-F]{32,200}$")
APNS_PATH = re.compile(r"^/3/device/([^/]+)$")  # as the Starlette routes below match them
FCM_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
FCM_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
FCM_ERROR_CODE = {
    404: "UNREGISTERED", 400: "INVALID_ARGUMENT", 429: "QUOTA_EXCEEDED", 503: "UNAVAILABLE",
    500: "INTERNAL", 401: "THIRD_PARTY_AUTH_ERROR", 403: "SENDER_ID_MISMATCH",
}  # fmt: skip
APNS_REASON = {
    400: "BadDeviceToken", 403: "InvalidProviderToken", 410: "Unregistered", 413: "PayloadTooLarge",
    429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable",
}  # fmt: skip


@dataclass
class Scripted:
    status: int = 200
    reason: str = ""
    retry_after: float | None = None
    delay: float = 0.0


@dataclass
class Received:
    seq: int
    platform: str  # apns | fcm
    token: str
    http_version: str
    headers: dict[str, str]
    payload: Any
    size: int
    title: str
    body: str
    received_at: float  # epoch seconds, when the request arrived
    status: int | None = None  # what we answered; None: no answer (still held, or the client left)
    answered_at: float | None = None
    push_id: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class FakeProvider:
    def __init__(self, *, quiet: bool = False) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, deque[Scripted]] = defaultdict(deque)
        self.access_tokens: set[str] = set()
        self.quiet = quiet
        self._seq = itertools.count(1)
        self.changed = asyncio.Event()
        # Provider tokens already parsed: a client reuses one for up to an hour (Apple keeps them too).
        self._provider_tokens: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    # -- scripting -----------------------------------------------------------------------------------

    def script(self, token: str, responses: list[dict[str, Any]]) -> None:
        self.scripts[token].extend(Scripted(**r) for r in responses)

    def reset(self) -> None:
        self.received.clear()
        self.scripts.clear()

    def _next_answer(self, token: str) -> Scripted:
        for key in (token, "*"):
            if self.scripts.get(key):
                return self.scripts[key].popleft()
        return Scripted()

    # -- the protocols -------------------------------------------------------------------------------

    async def apns(self, request: Request) -> Response:
        token = request.path_params["token"]
        raw = await request.body()
        http_version = str(request.scope.get("http_version", ""))
        if http_version != "2":
            return self._apns_error(400, "BadRequestHTTPVersion", "")  # APNs speaks HTTP/2 only
        checked = self._apns_check(request, token, raw)
        if isinstance(checked, tuple):
            return self._apns_error(*checked, token)
        doc = checked
        alert = (doc.get("aps") or {}).get("alert") or {}
        if isinstance(alert, str):
            alert = {"body": alert}
        data = {k: v for k, v in doc.items() if k != "aps"}
        push_id = request.headers.get("apns-id") or str(uuid.uuid4())
        record = self._record("apns", token, request, doc, len(raw), alert, push_id, data)
        answer = self._next_answer(token)
        return await self._answer(record, answer, self._apns_response(answer, push_id))

    def _provider_token(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The provider token's (header, claims), unverified; parsed once per token."""
        parsed = self._provider_tokens.get(token)
        if parsed is None:
            parsed = jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
            if len(self._provider_tokens) >= 1000:
                self._provider_tokens.clear()
            self._provider_tokens[token] = parsed
        return parsed

    def _apns_check(self, request: Request, token: str, raw: bytes) -> tuple[int, str] | dict[str, Any]:
        """The error Apple would answer, as (status, reason); else the payload, parsed."""
        headers = request.headers
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return 403, "MissingProviderToken"
        try:
            header, claims = self._provider_token(auth[7:])
        except jwt.PyJWTError:
            return 403, "InvalidProviderToken"
        if header.get("alg") != "ES256" or not header.get("kid") or not claims.get("iss"):
            return 403, "InvalidProviderToken"
        if time.time() - float(claims.get("iat", 0)) > 3600:
            return 403, "ExpiredProviderToken"
        if not headers.get("apns-topic"):
            return 400, "MissingTopic"
        if headers.get("apns-push-type") not in ("alert", "background", "voip", "liveactivity"):
            return 400, "InvalidPushType"
        if len(raw) > PAYLOAD_LIMIT:
            return 413, "PayloadTooLarge"
        if not raw:
            return 400, "PayloadEmpty"
        try:
            doc = json.loads(raw)
        except ValueError:
            return 400, "BadPayload"
        if not isinstance(doc, dict):
            return 400, "BadPayload"
        if not HEX_TOKEN.match(token):
            return 400, "BadDeviceToken"
        return doc

    @staticmethod
    def _apns_error(status: int, reason: str, token: str, retry_after: float | None = None) -> Response:
        body: dict[str, Any] = {"reason": reason}
        if status == 410:
            body["timestamp"] = int(time.time() * 1000)
        headers = {"apns-id": str(uuid.uuid4())}
        if retry_after is not None:
            headers["retry-after"] = str(int(retry_after))
        return JSONResponse(body, status_code=status, headers=headers)

    def _apns_response(self, answer: Scripted, push_id: str) -> Response:
        if answer.status == 200:
            return Response(status_code=200, headers={"apns-id": push_id})
        reason = answer.reason or APNS_REASON.get(answer.status, "InternalServerError")
        return self._apns_error(answer.status, reason, "", answer.retry_after)

    async def fcm(self, request: Request) -> Response:
        raw = await request.body()
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return self._fcm_error(401, "Request had invalid authentication credentials.", "")
        if len(raw) > PAYLOAD_LIMIT:
            return self._fcm_error(400, "Request payload size exceeds the limit: 4096 bytes.", "")
        try:
            doc = json.loads(raw)
            msg = doc["message"]
            token = str(msg["token"])
        except (ValueError, KeyError, TypeError):
            return self._fcm_error(400, "Invalid JSON payload received.", "")
        notification = msg.get("notification") or {}
        data = msg.get("data") or {}
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return self._fcm_error(400, "data values must be strings", "")
        push_id = str(data.get("push_id") or uuid.uuid4())
        record = self._record("fcm", token, request, doc, len(raw), notification, push_id, data)
        answer = self._next_answer(token)
        project = request.path_params["project"]
        if answer.status == 200:
            response: Response = JSONResponse({"name": f"projects/{project}/messages/{secrets.token_hex(8)}"})
        else:
            code = answer.reason or FCM_ERROR_CODE.get(answer.status, "INTERNAL")
            response = self._fcm_error(answer.status, f"scripted {code}", code, answer.retry_after)
        return await self._answer(record, answer, response)

    @staticmethod
    def _fcm_error(status: int, message: str, code: str, retry_after: float | None = None) -> Response:
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": FCM_STATUS.get(status, "UNKNOWN"),
        }
        if code:
            error["details"] = [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
            ]
        headers = {"retry-after": str(int(retry_after))} if retry_after is not None else None
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        try:
            claims = jwt.decode(str(form.get("assertion", "")), options={"verify_signature": False})
        except jwt.PyJWTError:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "bad assertion"}, status_code=400
            )
        if not claims.get("iss") or not claims.get("scope"):
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "iss and scope"}, status_code=400
            )
        access = f"ya29.fake-{secrets.token_urlsafe(24)}"
        self.access_tokens.add(access)
        return JSONResponse({"access_token": access, "expires_in": 3599, "token_type": "Bearer"})

    # -- recording -----------------------------------------------------------------------------------

    def _record(
        self,
        platform: str,
        token: str,
        request: Request,
        payload: Any,
        size: int,
        text: dict[str, Any],
        push_id: str,
        data: dict[str, Any],
    ) -> Received:
        record = Received(
            seq=next(self._seq),
            platform=platform,
            token=token,
            http_version=str(request.scope.get("http_version", "")),
            headers={
                k: v for k, v in request.headers.items() if k.startswith("apns-") or k == "content-type"
            },
            payload=payload,
            size=size,
            title=str(text.get("title") or ""),
            body=str(text.get("body") or ""),
            received_at=time.time(),
            push_id=push_id,
            data=data,
        )
        self.received.append(record)
        if not self.quiet:
            log.info("push %s %s…: %s %s", platform, token[:8], record.title, record.body)
        return record

    async def _answer(self, record: Received, answer: Scripted, response: Response) -> Response:
        try:
            if answer.delay:
                await asyncio.sleep(answer.delay)
        finally:
            self.changed.set()
        record.status = response.status_code
        record.answered_at = time.time()
        return response

    # -- inspection ----------------------------------------------------------------------------------

    async def list_received(self, request: Request) -> Response:
        items = self.received
        for name in ("platform", "token", "push_id"):
            if value := request.query_params.get(name):
                items = [r for r in items if getattr(r, name) == value]
        return JSONResponse({"received": [asdict(r) for r in items]})

    async def clear(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({})

    async def post_script(self, request: Request) -> Response:
        doc = await request.json()
        try:
            self.script(str(doc["token"]), list(doc["responses"]))
        except (KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad script: {exc}"}, status_code=400)
        return JSONResponse({})

    async def page(self, request: Request) -> Response:
        rows = "".join(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><b>{}</b><br>{}</td><td>{}</td></tr>".format(
                r.seq,
                time.strftime("%H:%M:%S", time.localtime(r.received_at)),
                r.platform,
                html.escape(r.token[:12]) + "…",
                html.escape(r.title),
                html.escape(r.body),
                r.status if r.status is not None else "…",
            )
            for r in reversed(self.received[-200:])
        )
        doc = (
            "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='2'>"
            "<title>Push notifications (fake APNs/FCM)</title>"
            "<style>body{font-family:system-ui;margin:2em}"
            "td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
            "</style></head><body>"
            f"<h1>Pushes received ({len(self.received)})</h1>"
            "<p>The bank's local APNs and FCM. Newest first; refreshes every 2 s. "
            "JSON: <a href='/_fake/received'>/_fake/received</a></p>"
            "<table><tr><th>#</th><th>time</th><th>provider</th><th>device</th><th>message</th>"
            f"<th>answer</th></tr>{rows}</table></body></html>"
        )
        return HTMLResponse(doc)

    def app(self) -> ASGIApp:
        """The push endpoints straight to their handlers (the hot path: no routing table, no middleware),
        everything else through Starlette (which also answers 405 to other methods on those paths)."""
        starlette = self._starlette()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["method"] == "POST":
                path = scope["path"]
                if match := APNS_PATH.match(path):
                    handler, scope["path_params"] = self.apns, {"token": match[1]}
                elif match := FCM_PATH.match(path):
                    handler, scope["path_params"] = self.fcm, {"project": match[1]}
                else:
                    return await starlette(scope, receive, send)
                response = await handler(Request(scope, receive))
                return await response(scope, receive, send)
            return await starlette(scope, receive, send)

        return app

    def _starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/3/device/{token}", self.apns, methods=["POST"]),
                Route("/v1/projects/{project}/messages:send", self.fcm, methods=["POST"]),
                Route("/token", self.token, methods=["POST"]),
                Route("/_fake/received", self.list_received, methods=["GET"]),
                Route("/_fake/received", self.clear, methods=["DELETE"]),
                Route("/_fake/script", self.post_script, methods=["POST"]),
                Route("/", self.page, methods=["GET"]),
                Route("/healthz", lambda r: JSONResponse({"status": "ok"}), methods=["GET"]),
            ]
        )


class FakeServer:
    """The fake on a real socket inside the current event loop (tests, benchmarks)."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, quiet: bool = True) -> None:
        self.fake = FakeProvider(quiet=quiet)
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self._server = FakeHttpServer(self.fake.app(), host, port)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local fake of APNs and FCM that shows what it receives.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--quiet", action="store_true", help="no log line per push (benchmarks)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fake-push %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = FakeHttpServer(FakeProvider(quiet=args.quiet).app(), args.host, args.port)
        await server.start()
        log.info("fake APNs/FCM on http://%s:%d (pushes at /)", args.host, args.port)
        await stop.wait()
        await server.close()

    try:  # the services' event loop (uvicorn's where installed): less of the fake's CPU is the loop's
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
