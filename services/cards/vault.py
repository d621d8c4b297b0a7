"""Card secrets: PAN and CVC generation, the PAN's fingerprint, encryption at rest, the CVC digest.

Nothing here touches the database or the network. The clear PAN and CVC only
ever exist in memory: the database holds the HMAC fingerprint (lookup), the
AES-256-GCM ciphertext (bound to the card id as associated data, so a
ciphertext copied onto another card's row does not decrypt), the last four
digits and a keyed digest of the CVC.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PAN_LENGTH = 16
NONCE_BYTES = 12
CIPHERTEXT_VERSION = b"\x01"  # leading byte: which key encrypted it, for rotation


def luhn_check_digit(partial: str) -> str:
    """The digit that makes `partial` + digit pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def luhn_valid(pan: str) -> bool:
    return len(pan) >= 2 and pan.isdigit() and pan.isascii() and luhn_check_digit(pan[:-1]) == pan[-1]


def new_pan(bin_prefix: str) -> str:
    body_digits = PAN_LENGTH - len(bin_prefix) - 1
    body = "".join(str(secrets.randbelow(10)) for _ in range(body_digits))
    partial = bin_prefix + body
    return partial + luhn_check_digit(partial)


def new_cvc() -> str:
    return f"{secrets.randbelow(1000):03d}"


@dataclass(frozen=True, slots=True)
class Expiry:
    month: int
    year: int  # four digits

    @classmethod
    def after(cls, issued: datetime, years: int) -> Expiry:
        return cls(issued.month, issued.year + years)

    @classmethod
    def from_yymm(cls, yymm: str) -> Expiry:
        """The network's form (ISO 8583 field 14)."""
        return cls(int(yymm[2:]), 2000 + int(yymm[:2]))

    @property
    def mm_yy(self) -> str:
        return f"{self.month:02d}/{self.year % 100:02d}"

    @property
    def yymm(self) -> str:
        return f"{self.year % 100:02d}{self.month:02d}"

    def passed(self, now: datetime) -> bool:
        """A card is good through the last day of its expiry month."""
        return (now.year, now.month) > (self.year, self.month)


class Vault:
    def __init__(self, encryption_key: bytes, fingerprint_key: bytes, cvc_key: bytes) -> None:
        if len({encryption_key, fingerprint_key, cvc_key}) != 3:
            raise ValueError("the encryption, fingerprint and CVC keys must differ")
        self._aead = AESGCM(encryption_key)
        self._fingerprint_key = fingerprint_key
        self._cvc_key = cvc_key

    def fingerprint(self, pan: str) -> str:
        return hmac.new(self._fingerprint_key, pan.encode(), hashlib.sha256).hexdigest()

    def encrypt_pan(self, pan: str, card_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return CIPHERTEXT_VERSION + nonce + self._aead.encrypt(nonce, pan.encode(), card_id.encode())

    def decrypt_pan(self, blob: bytes, card_id: str) -> str:
        if blob[:1] != CIPHERTEXT_VERSION:
            raise ValueError("unknown PAN ciphertext version")
        nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        return self._aead.decrypt(nonce, sealed, card_id.encode()).decode()

    def cvc_digest(self, card_id: str, cvc: str) -> str:
        # Keyed: a CVC has 1,000 values, so an unkeyed hash would be read back in a millisecond.
        return hmac.new(self._cvc_key, f"{card_id}:{cvc}".encode(), hashlib.sha256).hexdigest()

    def cvc_matches(self, card_id: str, cvc: str, digest: str) -> bool:
        return hmac.compare_digest(self.cvc_digest(card_id, cvc), digest)
