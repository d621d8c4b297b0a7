"""The ops credential: Bearer or Basic (the token as password), compared in constant time."""

from __future__ import annotations

import base64

import pytest

from services.gateway.ops.auth import OpsCredential, presented_secret
from shared.errors import BankError


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_secret_is_read_from_bearer_or_basic() -> None:
    assert presented_secret("Bearer s3cret") == "s3cret"
    assert presented_secret("bearer  s3cret ") == "s3cret"
    assert presented_secret(basic("ops", "s3cret")) == "s3cret"
    assert presented_secret(basic("anyone", "pa:ss")) == "pa:ss"
    for nothing in (None, "", "Bearer", "Basic !!!", basic("ops", ""), "Token s3cret"):
        assert presented_secret(nothing) is None


def test_only_the_ops_token_passes_and_refusals_are_typed_401s_with_a_basic_challenge() -> None:
    credential = OpsCredential("s3cret")
    credential.check("Bearer s3cret")
    credential.check(basic("ops", "s3cret"))
    for wrong in (None, "Bearer nope", basic("ops", "nope")):
        with pytest.raises(BankError) as refused:
            credential.check(wrong)
        assert refused.value.code == "unauthorized.ops_credential"
        assert refused.value.status == 401
        assert refused.value.headers and refused.value.headers["WWW-Authenticate"].startswith("Basic ")
