"""Signing secrets and Standard Webhooks signatures (https://www.standardwebhooks.com/).

A secret is `whsec_` + base64 of 32 random bytes; the HMAC key is those bytes. A message is signed as
`v1,` + base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}")); while a rotated-out secret
is still in its overlap window the header carries both signatures, space-separated, so a receiver holding
either secret verifies it.

At rest a secret is AES-256-GCM under WEBHOOKS_SECRET_KEY: version byte ‖ 96-bit nonce ‖ ciphertext, with
the webhook id as associated data (a ciphertext copied onto another webhook does not decrypt).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "whsec_"
SECRET_BYTES = 32
_VERSION = b"\x01"


def new_secret() -> str:
    return PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
    }


class SecretBox:
    """Encrypts signing secrets at rest."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, webhook_id: str, secret: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret.encode(), webhook_id.encode())

    def open(self, webhook_id: str, sealed: bytes) -> str:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown secret encryption version")
        return self._aead.decrypt(sealed[1:13], sealed[13:], webhook_id.encode()).decode()
