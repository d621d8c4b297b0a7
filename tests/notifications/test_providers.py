"""The APNs and FCM adapters against the fake provider over real sockets: the request each sends, and
every documented error path classified as Apple and Google say."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization

from bank.infra.ports import free_port
from services.notifications.config import NotificationsSettings, dev_apns_key
from services.notifications.providers import PAYLOAD_LIMIT, Push, SendResult
from services.notifications.providers.apns import ApnsProvider, ProviderToken
from services.notifications.providers.fake import FakeServer
from services.notifications.providers.fcm import (
    FcmProvider,
    ServiceAccountToken,
    StaticToken,
    generate_dev_private_key,
)
from services.notifications.providers.http2 import field, fields
from services.notifications.sender import Sender
from shared.retry_after import retry_after_seconds


@pytest_asyncio.fixture(loop_scope="session")
async def apns(fake: FakeServer) -> AsyncIterator[ApnsProvider]:
    provider = ApnsProvider(
        fake.url, "com.example.bank", ProviderToken("TEAM123456", "KEY1234567", dev_apns_key())
    )
    yield provider
    await provider.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def fcm(fake: FakeServer) -> AsyncIterator[FcmProvider]:
    tokens = ServiceAccountToken(
        "push@test.iam.gserviceaccount.com", generate_dev_private_key(), f"{fake.url}/token"
    )
    provider = FcmProvider(fake.url, "bank-test", tokens)
    yield provider
    await provider.aclose()


def push(token: str | None = None, body: str = "☕ £19.15 at Brightbird Espresso.") -> Push:
    return Push(str(uuid.uuid4()), token or uuid.uuid4().hex * 2, "Payment", body, {"account_id": "acc_1"})


def fcm_push(body: str = "☕ £19.15 at Brightbird Espresso.") -> Push:
    return Push(str(uuid.uuid4()), f"fcm-{uuid.uuid4().hex}:APA91b", "Payment", body, {"account_id": "acc_1"})


# -- APNs ------------------------------------------------------------------------------------------------


async def test_apns_sends_over_http2_with_apples_headers(fake: FakeServer, apns: ApnsProvider) -> None:
    p = push()
    result = await apns.send(p)
    assert result == SendResult("sent", 200, "", provider_id=p.push_id)
    [got] = [r for r in fake.fake.received if r.token == p.token]
    assert got.http_version == "2"
    assert got.headers["apns-topic"] == "com.example.bank"
    assert got.headers["apns-push-type"] == "alert"
    assert got.headers["apns-priority"] == "10"
    assert got.headers["apns-id"] == got.headers["apns-collapse-id"] == p.push_id
    assert int(got.headers["apns-expiration"]) > 0
    assert got.payload == {
        "aps": {"alert": {"title": "Payment", "body": p.body}, "sound": "default"},
        "account_id": "acc_1",
    }


async def test_apns_provider_token_is_es256_signed_by_the_team_key() -> None:
    clock = [1_000_000.0]
    tokens = ProviderToken(
        "TEAM123456", "KEY1234567", dev_apns_key(), refresh_seconds=3000, clock=lambda: clock[0]
    )
    first = tokens.get()
    public = serialization.load_pem_private_key(dev_apns_key().encode(), None).public_key()
    claims = jwt.decode(first, public, algorithms=["ES256"], options={"verify_iat": False})  # type: ignore[arg-type]
    assert claims == {"iss": "TEAM123456", "iat": 1_000_000}
    assert jwt.get_unverified_header(first) == {"alg": "ES256", "kid": "KEY1234567", "typ": "JWT"}
    clock[0] += 2999
    assert tokens.get() == first  # cached: Apple refuses refreshes more often than every 20 minutes
    clock[0] += 1
    assert tokens.get() != first  # and tokens older than an hour
    tokens.invalidate()
    clock[0] += 1
    assert jwt.decode(tokens.get(), options={"verify_signature": False})["iat"] == 1_003_001


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (400, "BadDeviceToken", "invalid_token"),
        (400, "DeviceTokenNotForTopic", "invalid_token"),
        (410, "Unregistered", "invalid_token"),
        (429, "TooManyRequests", "retry"),
        (500, "InternalServerError", "retry"),
        (503, "ServiceUnavailable", "retry"),
        (400, "BadTopic", "failed"),
        (413, "PayloadTooLarge", "failed"),
    ],
)
async def test_apns_errors(
    fake: FakeServer, apns: ApnsProvider, status: int, reason: str, outcome: str
) -> None:
    p = push()
    fake.fake.script(p.token, [{"status": status, "reason": reason}])
    result = await apns.send(p)
    assert (result.outcome, result.status, result.reason) == (outcome, status, reason)


async def test_apns_410_carries_a_timestamp(fake: FakeServer, apns: ApnsProvider) -> None:
    p = push()
    fake.fake.script(p.token, [{"status": 410, "reason": "Unregistered"}])
    headers = fields([(b"apns-topic", b"t"), (b"apns-push-type", b"alert")])
    resp = await apns.client.request(
        f"/3/device/{p.token}", apns.authorization() + headers, b'{"aps":{"alert":"x"}}'
    )
    assert resp.status_code == 410
    assert resp.json()["reason"] == "Unregistered" and isinstance(resp.json()["timestamp"], int)


async def test_apns_retry_after_is_read(fake: FakeServer, apns: ApnsProvider) -> None:
    p = push()
    fake.fake.script(p.token, [{"status": 429, "reason": "TooManyRequests", "retry_after": 30}])
    assert (await apns.send(p)).retry_after == 30


async def test_apns_bad_token_is_refused_by_the_fake_itself(apns: ApnsProvider) -> None:
    result = await apns.send(push(token="not-hex-at-all"))
    assert (result.outcome, result.reason) == ("invalid_token", "BadDeviceToken")


async def test_apns_expired_provider_token_is_re_signed_and_retried(
    fake: FakeServer, apns: ApnsProvider
) -> None:
    p = push()
    before = apns.token.get()
    fake.fake.script(p.token, [{"status": 403, "reason": "ExpiredProviderToken"}])
    result = await apns.send(p)
    assert (result.outcome, result.reason) == ("retry", "ExpiredProviderToken")
    assert apns.token._token is None  # the next send signs a new one
    assert (await apns.send(p)).outcome == "sent"
    assert apns.token.get() is not None and before is not None


async def test_apns_unreachable_is_retried() -> None:
    provider = ApnsProvider(f"http://127.0.0.1:{free_port()}", "t", ProviderToken("T", "K", dev_apns_key()))
    try:
        result = await provider.send(push())
    finally:
        await provider.aclose()
    assert result.outcome == "retry" and result.status is None


async def test_a_push_that_cannot_be_rendered_fails_alone(
    fake: FakeServer, apns: ApnsProvider, fcm: FcmProvider
) -> None:
    for provider, make in ((apns, push), (fcm, fcm_push)):
        good, bad = make(), make(body="\ud800 a lone surrogate")  # not UTF-8: rendering raises
        results = await provider.send_many([good, bad, good])
        assert [r.outcome for r in results] == ["sent", "retry", "sent"]
        assert results[1].reason.startswith("UnicodeEncodeError")


async def test_apns_payload_never_exceeds_the_limit(fake: FakeServer, apns: ApnsProvider) -> None:
    p = push(body="☕ " * 10_000)
    assert (await apns.send(p)).outcome == "sent"
    [got] = [r for r in fake.fake.received if r.token == p.token]
    assert got.size <= PAYLOAD_LIMIT
    assert got.body.endswith("…")


# -- FCM -------------------------------------------------------------------------------------------------


async def test_fcm_sends_a_v1_message_with_an_oauth2_bearer(fake: FakeServer, fcm: FcmProvider) -> None:
    p = fcm_push()
    result = await fcm.send(p)
    assert result.outcome == "sent" and result.provider_id is not None
    assert result.provider_id.startswith("projects/bank-test/messages/")
    [got] = [r for r in fake.fake.received if r.token == p.token]
    message = got.payload["message"]
    assert message["token"] == p.token
    assert message["notification"] == {"title": "Payment", "body": p.body}
    assert message["data"] == {"push_id": p.push_id, "account_id": "acc_1"}
    assert message["android"]["collapse_key"] == p.push_id
    assert message["apns"]["headers"]["apns-collapse-id"] == p.push_id


async def test_fcm_access_token_is_cached_until_it_expires(fake: FakeServer) -> None:
    clock = [1_000_000.0]
    key = generate_dev_private_key()
    tokens = ServiceAccountToken("a@b.example", key, f"{fake.url}/token", clock=lambda: clock[0])
    try:
        first = await tokens.token()
        assert first in fake.fake.access_tokens
        assertion = jwt.decode(tokens.assertion(), options={"verify_signature": False})
        assert assertion["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
        assert assertion["aud"] == f"{fake.url}/token"
        clock[0] += 3500
        assert await tokens.token() == first
        clock[0] += 100  # within a minute of expiry (3599 s): renewed
        assert await tokens.token() != first
    finally:
        await tokens.aclose()


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (404, "UNREGISTERED", "invalid_token"),
        (400, "INVALID_ARGUMENT", "invalid_token"),
        (403, "SENDER_ID_MISMATCH", "invalid_token"),
        (429, "QUOTA_EXCEEDED", "retry"),
        (503, "UNAVAILABLE", "retry"),
        (500, "INTERNAL", "retry"),
    ],
)
async def test_fcm_errors(fake: FakeServer, fcm: FcmProvider, status: int, code: str, outcome: str) -> None:
    p = fcm_push()
    fake.fake.script(p.token, [{"status": status, "reason": code}])
    result = await fcm.send(p)
    assert (result.outcome, result.status, result.reason) == (outcome, status, code)


async def test_fcm_error_bodies_are_google_rpc_status(fake: FakeServer, fcm: FcmProvider) -> None:
    p = fcm_push()
    fake.fake.script(p.token, [{"status": 404, "reason": "UNREGISTERED"}])
    bearer = field(b"authorization", f"Bearer {await fcm.tokens.token()}".encode())
    resp = await fcm.client.request(fcm.path, bearer, b'{"message":{"token":"%s"}}' % p.token.encode())
    error = resp.json()["error"]
    assert (error["code"], error["status"]) == (404, "NOT_FOUND")
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
    ]


async def test_fcm_rejected_credentials_are_renewed(fake: FakeServer) -> None:
    provider = FcmProvider(fake.url, "bank-test", StaticToken("not-issued-by-google"))
    try:
        result = await provider.send(fcm_push())
    finally:
        await provider.aclose()
    assert (result.outcome, result.status) == ("retry", 401)


async def test_fcm_retry_after_is_read(fake: FakeServer, fcm: FcmProvider) -> None:
    p = fcm_push()
    fake.fake.script(p.token, [{"status": 429, "reason": "QUOTA_EXCEEDED", "retry_after": 7}])
    assert (await fcm.send(p)).retry_after == 7


async def test_fcm_token_endpoint_down_is_retried() -> None:
    tokens = ServiceAccountToken("a@b", generate_dev_private_key(), f"http://127.0.0.1:{free_port()}/token")
    provider = FcmProvider("http://127.0.0.1:1", "p", tokens)
    try:
        result = await provider.send(fcm_push())
    finally:
        await provider.aclose()
    assert result.outcome == "retry" and "no OAuth2 token" in result.reason


async def test_fcm_payload_never_exceeds_the_limit(fake: FakeServer, fcm: FcmProvider) -> None:
    p = fcm_push(body="€" * 10_000)
    assert (await fcm.send(p)).outcome == "sent"
    [got] = [r for r in fake.fake.received if r.token == p.token]
    assert got.size <= PAYLOAD_LIMIT


# -- backoff ---------------------------------------------------------------------------------------------


def test_backoff_doubles_is_capped_and_honours_retry_after() -> None:
    settings = NotificationsSettings(retry_base_seconds=1, retry_max_seconds=10, retry_after_max_seconds=60)
    sender = Sender(None, {}, settings)  # type: ignore[arg-type]
    retry = SendResult("retry", 503)
    assert [sender.backoff(n, retry) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]
    assert sender.backoff(1, SendResult("retry", 429, retry_after=30)) == 30
    assert sender.backoff(1, SendResult("retry", 429, retry_after=3600)) == 60


def test_retry_after_header_forms() -> None:
    from datetime import UTC, datetime

    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = datetime(2026, 11, 26, 8, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Thu, 26 Nov 2026 08:01:00 GMT", now=now) == 60
