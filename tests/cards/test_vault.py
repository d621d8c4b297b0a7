"""Card secrets, pure: Luhn, PAN generation, fingerprint, encryption at rest, the CVC digest, expiry."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given
from hypothesis import strategies as st

from services.cards.config import CardsSettings, decode_key
from services.cards.vault import Expiry, Vault, luhn_check_digit, luhn_valid, new_cvc, new_pan

KEYS = [bytes([i]) * 32 for i in (1, 2, 3)]


def vault() -> Vault:
    return Vault(*KEYS)


def test_luhn_on_known_numbers() -> None:
    for valid in ("79927398713", "4111111111111111", "5555555555554444", "378282246310005"):
        assert luhn_valid(valid)
    for invalid in (
        "79927398710",
        "4111111111111112",
        "",
        "7",
        "41111111111111a1",
        "\uff14\uff11\uff11\uff11",
    ):
        assert not luhn_valid(invalid)
    assert luhn_check_digit("7992739871") == "3"


@given(st.text(alphabet="0123456789", min_size=1, max_size=18), st.data())
def test_the_check_digit_catches_every_single_digit_error(partial: str, data: st.DataObject) -> None:
    pan = partial + luhn_check_digit(partial)
    assert luhn_valid(pan)
    i = data.draw(st.integers(0, len(pan) - 1))
    wrong = data.draw(st.sampled_from([d for d in "0123456789" if d != pan[i]]))
    assert not luhn_valid(pan[:i] + wrong + pan[i + 1 :])


def test_new_pans_are_16_luhn_valid_digits_under_the_bin() -> None:
    pans = {new_pan("535522") for _ in range(500)}
    assert len(pans) == 500
    assert all(len(p) == 16 and p.startswith("535522") and luhn_valid(p) for p in pans)
    assert all(len(c) == 3 and c.isdigit() for c in (new_cvc() for _ in range(100)))


def test_fingerprints_are_keyed_and_stable() -> None:
    pan = "5355220123456789"
    assert vault().fingerprint(pan) == vault().fingerprint(pan)
    assert vault().fingerprint(pan) != Vault(KEYS[1], KEYS[0], KEYS[2]).fingerprint(pan)
    assert pan not in vault().fingerprint(pan) and len(vault().fingerprint(pan)) == 64


def test_pan_encryption_round_trips_and_is_bound_to_its_card() -> None:
    v = vault()
    sealed = v.encrypt_pan("5355220123456789", "card_1")
    assert b"5355220123456789" not in sealed and sealed != v.encrypt_pan("5355220123456789", "card_1")
    assert v.decrypt_pan(sealed, "card_1") == "5355220123456789"
    with pytest.raises(InvalidTag):
        v.decrypt_pan(sealed, "card_2")  # copied onto another card's row: refuses
    with pytest.raises(InvalidTag):
        Vault(KEYS[1], KEYS[0], KEYS[2]).decrypt_pan(sealed, "card_1")


def test_the_cvc_digest_is_keyed_per_card() -> None:
    v = vault()
    digest = v.cvc_digest("card_1", "123")
    assert v.cvc_matches("card_1", "123", digest)
    assert not v.cvc_matches("card_1", "124", digest) and not v.cvc_matches("card_2", "123", digest)
    assert v.cvc_digest("card_2", "123") != digest


def test_keys_must_differ_and_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        Vault(KEYS[0], KEYS[0], KEYS[1])
    with pytest.raises(ValueError):
        decode_key(base64.b64encode(b"short").decode())
    with pytest.raises(ValueError):
        CardsSettings(encryption_key="not base64!")
    assert CardsSettings().dev_keys_in_use() == [
        "CARDS_ENCRYPTION_KEY",
        "CARDS_FINGERPRINT_KEY",
        "CARDS_CVC_KEY",
    ]
    assert CardsSettings(cvc_key=base64.b64encode(KEYS[0]).decode()).dev_keys_in_use() == [
        "CARDS_ENCRYPTION_KEY",
        "CARDS_FINGERPRINT_KEY",
    ]


def test_expiry_forms_and_the_last_valid_day() -> None:
    expiry = Expiry.after(datetime(2026, 11, 26, tzinfo=UTC), 3)
    assert (expiry.mm_yy, expiry.yymm) == ("11/29", "2911") and Expiry.from_yymm("2911") == expiry
    assert not expiry.passed(datetime(2029, 11, 30, 23, 59, tzinfo=UTC))
    assert expiry.passed(datetime(2029, 12, 1, tzinfo=UTC))
