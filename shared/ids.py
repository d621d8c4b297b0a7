"""Public identifiers in Mondo's style: a type prefix and a time-ordered random part.

`acc_01JD…`, `tx_01JD…`: 26 Crockford base32 characters (48-bit millisecond
time + 80 random bits, as ULID), so ids sort by creation time and never collide.
"""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return f"{prefix}_{''.join(reversed(chars))}"


_PLAUSIBLE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def plausible_id(value: str) -> bool:
    """Whether `value` could be one of our ids. Anything else names nothing we hold, and must not
    be put in another service's URL (100 KB does not fit; an encoded "/" or ".." would re-route)."""
    return _PLAUSIBLE.fullmatch(value) is not None
