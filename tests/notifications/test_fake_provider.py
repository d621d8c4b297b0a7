"""The fake APNs/FCM itself: what it checks, records, shows and can be told to answer."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from bank.infra.ports import free_port
from services.notifications.config import dev_apns_key
from services.notifications.providers.apns import ProviderToken
from services.notifications.providers.fake import FakeServer

TOKEN = "ab" * 32


def apns_headers() -> dict[str, str]:
    token = ProviderToken("TEAM", "KEY", dev_apns_key()).get()
    return {"authorization": f"bearer {token}", "apns-topic": "com.example.bank", "apns-push-type": "alert"}


async def test_apns_needs_http2_and_a_provider_token(fake: FakeServer) -> None:
    body = b'{"aps":{"alert":{"title":"T","body":"B"}}}'
    async with httpx.AsyncClient(base_url=fake.url) as http1:
        r = await http1.post(f"/3/device/{TOKEN}", content=body, headers=apns_headers())
        assert (r.status_code, r.json()["reason"]) == (400, "BadRequestHTTPVersion")
    async with httpx.AsyncClient(base_url=fake.url, http1=False, http2=True) as h2:
        r = await h2.post(f"/3/device/{TOKEN}", content=body, headers={"apns-topic": "t"})
        assert (r.status_code, r.json()["reason"]) == (403, "MissingProviderToken")
        r = await h2.post(
            f"/3/device/{TOKEN}", content=body, headers={**apns_headers(), "authorization": "bearer x"}
        )
        assert (r.status_code, r.json()["reason"]) == (403, "InvalidProviderToken")
        r = await h2.post(f"/3/device/{TOKEN}", content=b"{" + b" " * 5000 + b"}", headers=apns_headers())
        assert (r.status_code, r.json()["reason"]) == (413, "PayloadTooLarge")
        r = await h2.post(
            f"/3/device/{TOKEN}", content=body, headers={**apns_headers(), "apns-push-type": "x"}
        )
        assert (r.status_code, r.json()["reason"]) == (400, "InvalidPushType")
        r = await h2.post(f"/3/device/{TOKEN}", content=body, headers={**apns_headers(), "apns-id": "id-1"})
        assert (r.status_code, r.headers["apns-id"]) == (200, "id-1")
    assert [(x.token, x.title, x.body, x.status) for x in fake.fake.received] == [(TOKEN, "T", "B", 200)]


async def test_other_methods_and_paths_are_answered_as_a_web_server_would(fake: FakeServer) -> None:
    async with httpx.AsyncClient(base_url=fake.url, http1=False, http2=True) as h2:
        for method, path, status in [
            ("GET", f"/3/device/{TOKEN}", 405),
            ("GET", "/v1/projects/p/messages:send", 405),
            ("POST", f"/3/device/{TOKEN}/more", 404),
            ("POST", "/v1/projects/p/q/messages:send", 404),
        ]:
            assert (await h2.request(method, path)).status_code == status


async def test_fcm_needs_a_bearer_from_its_token_endpoint(fake: FakeServer) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as http:
        message = {"message": {"token": "t1", "notification": {"title": "T", "body": "B"}}}
        r = await http.post("/v1/projects/p/messages:send", json=message)
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
        r = await http.post("/token", data={"grant_type": "password"})
        assert r.status_code == 400
        assertion = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJhQGIiLCJzY29wZSI6InMifQ."  # alg none: iss and scope
        r = await http.post(
            "/token",
            data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        )
        assert r.status_code == 200 and r.json()["token_type"] == "Bearer"
        bearer = {"authorization": f"Bearer {r.json()['access_token']}"}
        r = await http.post("/v1/projects/p/messages:send", json=message, headers=bearer)
        assert r.status_code == 200 and r.json()["name"].startswith("projects/p/messages/")
        bad = {"message": {"token": "t1", "data": {"n": 1}}}
        r = await http.post("/v1/projects/p/messages:send", json=bad, headers=bearer)
        assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_scripts_answer_in_order_then_200(fake: FakeServer) -> None:
    async with httpx.AsyncClient(base_url=fake.url, http1=False, http2=True) as h2:
        r = await h2.post(
            "/_fake/script",
            json={"token": TOKEN, "responses": [{"status": 503}, {"status": 410, "reason": "Unregistered"}]},
        )
        assert r.status_code == 200
        answers = []
        for _ in range(3):
            r = await h2.post(f"/3/device/{TOKEN}", content=b'{"aps":{}}', headers=apns_headers())
            answers.append((r.status_code, r.json().get("reason") if r.content else None))
        assert answers == [(503, "ServiceUnavailable"), (410, "Unregistered"), (200, None)]
        assert (await h2.post("/_fake/script", json={"nope": 1})).status_code == 400


async def test_received_json_filters_and_the_page_shows_pushes(fake: FakeServer) -> None:
    async with httpx.AsyncClient(base_url=fake.url, http1=False, http2=True) as h2:
        alert = '{"aps":{"alert":{"title":"Payment","body":"☕ £19.15 at <Brightbird>"}}}'.encode()
        await h2.post(f"/3/device/{TOKEN}", content=alert, headers=apns_headers())
        await h2.post(f"/3/device/{'cd' * 32}", content=alert, headers=apns_headers())
        got = (await h2.get("/_fake/received", params={"token": TOKEN})).json()["received"]
        assert [(g["platform"], g["body"]) for g in got] == [("apns", "☕ £19.15 at <Brightbird>")]
        page = await h2.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "☕ £19.15 at &lt;Brightbird&gt;" in page.text and "Pushes received (2)" in page.text
        assert (await h2.delete("/_fake/received")).status_code == 200
        assert (await h2.get("/_fake/received")).json() == {"received": []}


async def test_runs_as_a_module() -> None:
    port = free_port()
    command = [sys.executable, "-m", "services.notifications.providers.fake", "--port", str(port)]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=False, http2=True) as h2:
            while True:
                assert proc.returncode is None, "the fake exited"
                try:
                    r = await h2.post(f"/3/device/{TOKEN}", content=b'{"aps":{}}', headers=apns_headers())
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the fake did not start"
                    await asyncio.sleep(0.1)
            assert r.status_code == 200
            assert len((await h2.get("/_fake/received")).json()["received"]) == 1
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
