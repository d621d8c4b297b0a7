"""Identity's pure parts: password hashing and the input rules. No database, no web."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.accounts.identity import passwords, rules
from services.accounts.identity.tokens import digest, new_secret, secret_matches
from shared.errors import BankError


@settings(max_examples=8, deadline=None)  # scrypt is slow on purpose
@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_a_hash_verifies_its_password_and_no_other(password: str, other: str) -> None:
    stored = passwords.hash_password(password)
    assert passwords.verify_password(password, stored)
    assert passwords.verify_password(other, stored) == (other == password)


def test_a_hash_describes_itself_and_is_salted() -> None:
    first, second = passwords.hash_password("hunter22"), passwords.hash_password("hunter22")
    scheme, n, r, p, salt, _ = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert first != second  # a fresh salt each time


@pytest.mark.parametrize(
    "stored", ["", "plain", "scrypt$x$8$1$AA==$AA==", "bcrypt$1$2$3$AA==$AA==", "scrypt$16384$8$1$!!$AA=="]
)
def test_a_malformed_hash_never_matches(stored: str) -> None:
    assert passwords.verify_password("anything", stored) is False


async def test_an_unknown_user_is_refused_like_a_wrong_password() -> None:
    stored = passwords.hash_password("right password")
    assert await passwords.check_password_async("right password", stored) is True
    assert await passwords.check_password_async("wrong password", stored) is False
    assert await passwords.check_password_async("right password", None) is False


def test_secrets_are_stored_as_digests() -> None:
    secret = new_secret()
    assert len(secret) >= 43 and secret != new_secret()
    assert secret_matches(secret, digest(secret))
    assert not secret_matches(secret + "x", digest(secret))


@pytest.mark.parametrize(
    "uri", ["https://app.example/cb", "http://localhost:8080/cb", "mondo://auth", "com.example.app:/oauth"]
)
def test_redirect_uris_that_can_be_registered(uri: str) -> None:
    assert rules.check_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "/relative",
        "https://app.example/cb#frag",
        "javascript:alert(1)",
        "https:///nohost",
        "https://a b/",
        "",
    ],
)
def test_redirect_uris_that_cannot(uri: str) -> None:
    with pytest.raises(BankError) as caught:
        rules.check_redirect_uri(uri)
    assert caught.value.code == "bad_request.bad_param.redirect_uri"


def test_the_redirect_keeps_the_uris_own_query_and_encodes_ours() -> None:
    assert rules.with_query("https://a.example/cb?x=1", {"code": "a b&c", "state": "s"}) == (
        "https://a.example/cb?x=1&code=a+b%26c&state=s"
    )
    assert rules.with_query("mondo://auth", {"code": "c"}) == "mondo://auth?code=c"
