"""ISO 8583:1987 messages in ASCII with hex-ASCII bitmaps, framed by a 2-byte big-endian length.

The profile is the one pyiso8583 calls `iso8583.specs.default_ascii`: every data element is ASCII,
a variable one is preceded by its length in 2 (LLVAR) or 3 (LLLVAR) ASCII digits, and the bitmaps
are 16 hex characters each (a secondary one when bit 1 is set). Bit 65 would announce a tertiary
bitmap (fields 129-192), which this profile does not use: such a message is a format error.

This module is our own implementation, written from the standard; the tests encode and decode the
same messages with pyiso8583 (an independent implementation) against it, and check this table
against pyiso8583's (decision 0032).

Nothing here ever puts a field's value into an error: a `DecodeError` names the field and what is
wrong with it, so that no PAN can reach a log line through an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_FRAME = 8 * 1024  # bytes of message after the length prefix; above it the link is closed
LENGTH_PREFIX = 2

# (length digits: 0 fixed, 2 LLVAR, 3 LLLVAR; maximum length in characters) for data elements 1-128.
_FIXED = {
    1: 16, 3: 6, 4: 12, 5: 12, 6: 12, 7: 10, 8: 8, 9: 8, 10: 8, 11: 6, 12: 6, 13: 4, 14: 4, 15: 4, 16: 4,
    17: 4, 18: 4, 19: 3, 20: 3, 21: 3, 22: 3, 23: 3, 24: 3, 25: 2, 26: 2, 27: 1, 28: 9, 29: 9, 30: 9, 31: 9,
    37: 12, 38: 6, 39: 2, 40: 3, 41: 8, 42: 15, 43: 40, 49: 3, 50: 3, 51: 3, 52: 16, 53: 16, 64: 16,
    65: 16, 66: 1, 67: 2, 68: 3, 69: 3, 70: 3, 71: 4, 72: 4, 73: 6, 74: 10, 75: 10, 76: 10, 77: 10,
    78: 10, 79: 10, 80: 10, 81: 10, 82: 12, 83: 12, 84: 12, 85: 12, 86: 16, 87: 16, 88: 16, 89: 16,
    90: 42, 91: 1, 92: 2, 93: 5, 94: 7, 95: 42, 96: 16, 97: 17, 98: 25, 128: 16,
}  # fmt: skip
_LLVAR = {2: 19, 32: 11, 33: 11, 34: 28, 35: 37, 44: 25, 45: 76, 99: 11, 100: 11, 101: 17, 102: 28, 103: 28}
_LLLVAR = {36: 104, 46: 999, 47: 999, 48: 999, 54: 240, 55: 510, 104: 100,
           **{f: 999 for f in (*range(56, 64), *range(105, 128))}}  # fmt: skip

FIELDS: dict[int, tuple[int, int]] = {
    **{f: (0, n) for f, n in _FIXED.items()},
    **{f: (2, n) for f, n in _LLVAR.items()},
    **{f: (3, n) for f, n in _LLLVAR.items()},
}
assert sorted(FIELDS) == list(range(1, 129))
_TABLE: tuple[tuple[int, int], ...] = ((0, 0), *(FIELDS[f] for f in range(1, 129)))

_HEX = b"0123456789abcdefABCDEF"
_DATA_BITS = ((1 << 128) - 1) ^ (1 << 127) ^ (1 << 63)


class DecodeError(ValueError):
    """A message that does not follow the profile. `mti` is its message type if that could be read,
    `fields` the data elements read before the fault (for the format-error answer's echo), `field`
    the element at fault (None: the type or a bitmap). The text never holds a value."""

    def __init__(
        self, reason: str, *, mti: str | None = None, fields: dict[int, str] | None = None,
        field: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(reason if field is None else f"field {field}: {reason}")
        self.reason = reason
        self.mti = mti
        self.fields = fields if fields is not None else {}
        self.field = field


class EncodeError(ValueError):
    """A message we were about to send does not fit the profile (a bug of ours). No value in it."""


@dataclass(frozen=True, slots=True)
class Message:
    mti: str
    fields: dict[int, str]


def _is_hex(chunk: bytes) -> bool:
    return len(chunk) == 16 and not chunk.translate(None, _HEX)


def decode(raw: bytes) -> Message:
    """One message (without its length prefix)."""
    n = len(raw)
    head = raw[:4]
    if len(head) < 4 or not head.isdigit():
        raise DecodeError("the message type is not four digits")
    mti = head.decode()
    fields: dict[int, str] = {}
    if not _is_hex(raw[4:20]):
        raise DecodeError("the primary bitmap is not 16 hex digits", mti=mti, fields=fields)
    primary = int(raw[4:20], 16)
    idx = 20
    secondary = 0
    if primary >> 63:
        if not _is_hex(raw[20:36]):
            raise DecodeError("the secondary bitmap is not 16 hex digits", mti=mti, fields=fields)
        secondary = int(raw[20:36], 16)
        idx = 36
        if secondary >> 63:
            raise DecodeError("a tertiary bitmap is not in this profile", mti=mti, fields=fields, field=65)
    bits = ((primary << 64) | secondary) & _DATA_BITS  # bit 128 - f is field f's; 1 and 65 are not data
    while bits:
        top = bits.bit_length()
        bits ^= 1 << (top - 1)
        f = 129 - top
        digits, max_len = _TABLE[f]
        if digits:
            prefix = raw[idx : idx + digits]
            if len(prefix) < digits or not prefix.isdigit():
                raise DecodeError(f"its length is not {digits} digits", mti=mti, fields=fields, field=f)
            length = int(prefix)
            if length > max_len:
                raise DecodeError(f"longer than {max_len}", mti=mti, fields=fields, field=f)
            idx += digits
        else:
            length = max_len
        end = idx + length
        if end > n:
            raise DecodeError("the message ends inside it", mti=mti, fields=fields, field=f)
        try:
            fields[f] = raw[idx:end].decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("not ASCII", mti=mti, fields=fields, field=f) from None
        idx = end
    if idx != n:
        raise DecodeError("bytes after the last field", mti=mti, fields=fields)
    return Message(mti, fields)


def encode(mti: str, fields: Mapping[int, str]) -> bytes:
    """One message (without its length prefix); fields 2-128 but 65."""
    if len(mti) != 4 or not mti.isdigit():
        raise EncodeError("the message type must be four digits")
    primary = secondary = 0
    parts: list[bytes] = []
    for f in sorted(fields):
        if not 2 <= f <= 128 or f == 65:
            raise EncodeError(f"field {f} is not a data element of this profile")
        try:
            data = fields[f].encode("ascii")
        except UnicodeEncodeError:
            raise EncodeError(f"field {f}: not ASCII") from None
        digits, max_len = _TABLE[f]
        if digits:
            if len(data) > max_len:
                raise EncodeError(f"field {f}: longer than {max_len}")
            parts.append(b"%0*d" % (digits, len(data)))
        elif len(data) != max_len:
            raise EncodeError(f"field {f}: must be {max_len} characters")
        parts.append(data)
        if f <= 64:
            primary |= 1 << (64 - f)
        else:
            secondary |= 1 << (128 - f)
    if secondary:
        primary |= 1 << 63
        head = b"%s%016X%016X" % (mti.encode(), primary, secondary)
    else:
        head = b"%s%016X" % (mti.encode(), primary)
    return head + b"".join(parts)


def frame(message: bytes) -> bytes:
    """The message with its 2-byte big-endian length in front."""
    if len(message) > MAX_FRAME:
        raise EncodeError(f"a message over {MAX_FRAME} bytes")
    return len(message).to_bytes(LENGTH_PREFIX, "big") + message


def is_request(mti: str) -> bool:
    """Requests, advices and notifications (third digit even) are answered; responses are not."""
    return mti[2] in "02468"


def response_mti(mti: str) -> str:
    """0100/0101 -> 0110, 0120/0121 -> 0130, 0400/0401 -> 0410, 0800 -> 0810."""
    return f"{mti[:2]}{int(mti[2]) + 1}0"
