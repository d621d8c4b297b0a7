"""KeySet against a real socket: accounts absent at first, then answering its JWKS."""

from __future__ import annotations

import asyncio
import json

import pytest

from bank.infra.ports import free_port
from shared.auth import SigningKey
from shared.errors import BankError
from shared.http import ServiceClient
from shared.remote_auth import KeySet, identity_client


async def _serve_jwks(port: int, key: SigningKey) -> asyncio.Server:
    body = json.dumps({"keys": [key.public_jwk()]}).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # the request line and headers: every GET here is for the JWKS
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", port)


async def test_a_request_loads_the_keys_as_soon_as_accounts_answers_not_minutes_later() -> None:
    """The gateway's background loads failed while accounts was starting; the first request after
    accounts comes up must load the keys itself, not answer 503 until the next background attempt or
    until a breaker opened by those failures lets a call through."""
    port = free_port()
    key = SigningKey.generate()
    client = identity_client(f"http://127.0.0.1:{port}")
    keys = KeySet(client, min_refresh_seconds=3600, min_retry_unloaded_seconds=0.0)
    try:
        for _ in range(10):  # nothing listens yet: the background attempts (and revocation polls) fail
            assert not await keys.refresh()
        with pytest.raises(BankError) as refused:
            await keys.lookup(key.kid)
        assert refused.value.code == "service_unavailable.accounts"
        server = await _serve_jwks(port, key)
        try:
            assert await keys.lookup(key.kid) is not None  # without waiting out min_refresh_seconds
        finally:
            server.close()
            await server.wait_closed()
    finally:
        await client.aclose()


async def test_once_loaded_unknown_kids_do_not_refetch_before_min_refresh_seconds() -> None:
    port = free_port()
    key = SigningKey.generate()
    server = await _serve_jwks(port, key)
    client = ServiceClient("accounts", f"http://127.0.0.1:{port}", retries=0)
    keys = KeySet(client, min_refresh_seconds=3600, min_retry_unloaded_seconds=0.0)
    try:
        assert await keys.refresh()
        assert await keys.lookup("no-such-kid") is None
        assert await keys.lookup("another-made-up-kid") is None
        assert keys.fetches == 1
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
