"""Password hashing with scrypt: memory-hard, and in the standard library.

A stored hash describes itself: `scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`, so
the cost can be raised later without breaking existing hashes. Hashing costs
about 16 MiB and tens of milliseconds of CPU: the async helpers run it in a
worker thread so the event loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os

N, R, P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MAXMEM = 64 * 1024 * 1024


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=length)


def hash_password(password: str) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, N, R, P, HASH_BYTES)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(expected, validate=True)
        got = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p), len(want))
    except ValueError:  # a malformed stored hash (binascii.Error is a ValueError) never matches
        return False
    return hmac.compare_digest(got, want)


@functools.cache
def _dummy_hash() -> str:
    """Checked when the email is unknown, so that an unknown email costs as long as a wrong password."""
    return hash_password(_b64(os.urandom(12)))


def check_password(password: str, stored: str | None) -> bool:
    """True only for the right password. `stored` None (an unknown user) takes as long, and is False."""
    if stored is None:
        verify_password(password, _dummy_hash())
        return False
    return verify_password(password, stored)


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def check_password_async(password: str, stored: str | None) -> bool:
    return await asyncio.to_thread(check_password, password, stored)
