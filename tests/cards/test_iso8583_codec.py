"""Our ISO 8583 codec against pyiso8583's (an independent implementation of the same profile,
`iso8583.specs.default_ascii`): the same field table, the same bytes for the same message either way,
and nothing but a DecodeError, without any value in its text, for anything else."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import iso8583
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iso8583.specs import default_ascii

from services.cards.iso8583 import codec, profile
from services.cards.iso8583.codec import DecodeError

PAN = "5355221234567890"
ASCII = st.characters(min_codepoint=0, max_codepoint=127)


def test_the_field_table_is_pyiso8583s_default_ascii() -> None:
    for field in range(1, 129):
        spec = default_ascii[str(field)]
        assert (spec["data_enc"], spec["len_enc"]) == ("ascii", "ascii")
        assert codec.FIELDS[field] == (spec["len_type"], spec["max_len"]), field
    assert (default_ascii["t"]["max_len"], default_ascii["p"]["max_len"]) == (4, 16)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, str]:
    numbers = draw(st.sets(st.sampled_from([f for f in range(2, 129) if f != 65]), min_size=1, max_size=20))
    doc = {"t": draw(st.from_regex(r"\A[0-9]{4}\Z"))}
    for f in sorted(numbers):
        digits, max_len = codec.FIELDS[f]
        size = max_len if digits == 0 else draw(st.integers(0, max_len))
        doc[str(f)] = draw(st.text(ASCII, min_size=size, max_size=size))
    return doc


@settings(max_examples=300, deadline=None)
@given(doc=documents())
def test_pyiso8583s_messages_decode_and_ours_encode_to_the_same_bytes(doc: dict[str, str]) -> None:
    theirs = bytes(iso8583.encode(dict(doc), default_ascii)[0])
    message = codec.decode(theirs)
    assert message.mti == doc["t"]
    assert message.fields == {int(k): v for k, v in doc.items() if k != "t"}
    ours = codec.encode(message.mti, message.fields)
    assert ours == theirs
    decoded, _ = iso8583.decode(ours, default_ascii)
    assert {k: v for k, v in decoded.items() if k not in ("p", "1")} == doc


def sample() -> bytes:
    doc = {
        "t": "0100", "2": PAN, "3": "000000", "4": "000000001915", "7": "1126081500", "11": "004211",
        "14": "2911", "18": "5814", "37": "000000123456", "42": "BB0001".ljust(15),
        "43": "BRIGHTBIRD ESPRESSO".ljust(25) + "London".ljust(13) + "GB", "48": "9203123", "49": "826",
        "63": "MCC7HQ3B91126", "95": "0" * 42,
    }  # fmt: skip
    return bytes(iso8583.encode(doc, default_ascii)[0])


def test_every_truncation_is_a_decode_error_that_names_no_value() -> None:
    raw = sample()
    for end in range(len(raw)):
        with pytest.raises(DecodeError) as caught:
            codec.decode(raw[:end])
        text = str(caught.value)
        assert PAN not in text and PAN[6:15] not in text
        if end >= 4:
            assert caught.value.mti == "0100"
        # What was read before the fault is kept, for the format error's echo.
        assert all(raw.find(v.encode()) >= 0 for v in caught.value.fields.values())
    with pytest.raises(DecodeError, match="after the last field"):
        codec.decode(raw + b"0")


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_are_a_decode_error_or_a_message(data: bytes) -> None:
    try:
        message = codec.decode(data)
    except DecodeError:
        return
    assert codec.decode(codec.encode(message.mti, message.fields)) == message


def test_strictness_where_int_would_be_lenient() -> None:
    raw = sample()
    for bad in (raw.replace(b"16" + PAN.encode(), b"+6" + PAN.encode()[:6]),  # a signed length
                raw[:4] + b" " + raw[5:],  # a space in the bitmap
                b"01 0" + raw[4:]):  # fmt: skip
        with pytest.raises(DecodeError):
            codec.decode(bad)
    tertiary = b"0800" + b"8000000000000000" + b"8000000000000000"
    with pytest.raises(DecodeError, match="tertiary"):
        codec.decode(tertiary)


def test_encoding_refuses_what_does_not_fit() -> None:
    for mti, fields in (("0110", {4: "12"}), ("0110", {2: "1" * 20}), ("0110", {65: "0" * 16}),
                        ("0110", {1: "0" * 16}), ("110", {}), ("0110", {43: "é" * 40})):  # fmt: skip
        with pytest.raises(codec.EncodeError):
            codec.encode(mti, fields)
    with pytest.raises(codec.EncodeError):
        codec.frame(b"0" * (codec.MAX_FRAME + 1))
    assert codec.frame(b"0110")[:2] == b"\x00\x04"


def test_response_types() -> None:
    pairs = {"0100": "0110", "0101": "0110", "0120": "0130", "0121": "0130", "0400": "0410",
             "0401": "0410", "0800": "0810", "0200": "0210"}  # fmt: skip
    assert {mti: codec.response_mti(mti) for mti in pairs} == pairs
    assert all(codec.is_request(m) for m in pairs) and not any(codec.is_request(m) for m in pairs.values())


def test_transmission_time_takes_the_year_nearest_now() -> None:
    new_year = datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert profile.transmission_time("1231235958", new_year) == datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC)
    assert profile.transmission_time("0101000004", new_year).year == 2027
    leap = datetime(2028, 3, 1, tzinfo=UTC)
    assert profile.transmission_time("0229120000", leap) == datetime(2028, 2, 29, 12, tzinfo=UTC)
    for bad in ("1301000000", "0230120000", "12312359AB", "0101250000"):
        with pytest.raises(profile.FormatError):
            profile.transmission_time(bad, new_year)


def test_subelements_and_additional_amounts() -> None:
    assert profile.subelements("92031230105hello") == {"92": "123", "01": "hello"}
    assert profile.join_subelements({"92": "123", "01": "hello"}) == "92031230105hello"
    assert profile.subelements("") == {}
    for bad in ("9", "92", "9203", "92031239203456", "9A03123"):
        with pytest.raises(profile.FormatError):
            profile.subelements(bad)
    assert profile.additional_amount(12_345, "GBP") == "0002826C000000012345"
    assert profile.additional_amount(-5, "GBP") == "0002826D000000000005"
    assert profile.additional_amount(1, "XYZ") is None
    assert profile.currency("826") == "GBP" and profile.currency("123") == "XXX"


def test_the_examples_in_the_interface_specification_decode_as_it_says() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "iso8583.md").read_text()
    examples = re.findall(r"### (\d{4})[^\n]*\n\n```\n([0-9a-f\n]+)```\n\nFields: ([^\n]+)", text)
    assert {mti for mti, _, _ in examples} >= {"0100", "0101", "0110", "0120", "0130", "0400", "0410", "0800",
                                                "0810"}  # fmt: skip
    for mti, hex_frame, listed in examples:
        frame = bytes.fromhex(hex_frame.replace("\n", ""))
        assert int.from_bytes(frame[:2], "big") == len(frame) - 2
        expected = {int(f): v for f, v in re.findall(r"(\d+)='([^']*)'", listed)}
        ours = codec.decode(frame[2:])
        theirs, _ = iso8583.decode(frame[2:], default_ascii)
        assert ours.mti == theirs["t"] == mti
        assert ours.fields == expected == {int(k): v for k, v in theirs.items() if k.isdigit() and k != "1"}
