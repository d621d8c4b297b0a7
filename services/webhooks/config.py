"""Webhooks' own settings (prefix `WEBHOOKS_`).

The secret key encrypts the endpoints' signing secrets at rest. It defaults to a value derived from a
public label so a development bank needs no configuration; production must set WEBHOOKS_SECRET_KEY
(base64 of 32 random bytes). The service logs a warning at start-up while the default is in use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KEY_BYTES = 32
DEV_SECRET_KEY = base64.b64encode(
    hashlib.sha256(b"mondo-bank development key: webhooks secrets").digest()
).decode()

# Standard Webhooks / Svix: the first attempt at once, then these delays, then exhausted.
DEFAULT_SCHEDULE = (5.0, 300.0, 1_800.0, 7_200.0, 18_000.0, 36_000.0, 36_000.0)


def decode_key(value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"must decode to {KEY_BYTES} bytes, not {len(raw)}")
    return raw


class WebhooksSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WEBHOOKS_", extra="ignore")

    # AES-256-GCM key for the signing secrets at rest.
    secret_key: str = DEV_SECRET_KEY
    # http:// receivers are refused unless this is set (the embedded / development bank sets it).
    allow_http: bool = False
    # CIDRs admitted although they are loopback, private, link-local...: e.g. ["127.0.0.1/32"] (JSON list).
    allow_networks: list[str] = Field(default_factory=list)
    max_webhooks_per_account: int = Field(default=50, ge=1)

    # Delivery.
    timeout_seconds: float = Field(default=10.0, gt=0)  # one attempt, DNS to the last body byte
    retry_schedule_seconds: list[float] = Field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    jitter: float = Field(default=0.1, ge=0, lt=1)  # each scheduled delay times uniform(1 - j, 1 + j)
    max_retry_after_seconds: float = Field(default=86_400.0, ge=0)
    disable_after_seconds: float = Field(default=5 * 86_400.0, ge=0)  # failing this long: disabled
    max_response_bytes: int = Field(default=64 * 1024, ge=0)
    workers: int = Field(default=64, ge=1)  # attempts in flight per process
    per_endpoint_concurrency: int = Field(default=1, ge=1)  # 1 keeps each endpoint's event order
    claim_batch: int = Field(default=100, ge=1)
    poll_seconds: float = Field(default=0.5, gt=0)
    # A claimed delivery is not claimed again before this long after the attempt's timeout: what a
    # killed process leaves behind is sent again once the lease runs out.
    lease_grace_seconds: float = Field(default=20.0, ge=0)

    # Secret rotation: the previous secret still signs (beside the new one) this long.
    rotation_overlap_seconds: float = Field(default=86_400.0, ge=0, le=7 * 86_400.0)

    # Owners' access tokens: accounts' JWKS and revocation list.
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0)
    revocation_poll_seconds: float = Field(default=2.0, gt=0)

    @field_validator("secret_key")
    @classmethod
    def _is_a_key(cls, value: str) -> str:
        decode_key(value)
        return value

    @field_validator("allow_networks")
    @classmethod
    def _are_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(v < 0 for v in value):
            raise ValueError("delays must be >= 0")
        return value

    @property
    def lease_seconds(self) -> float:
        return self.timeout_seconds + self.lease_grace_seconds

    def dev_key_in_use(self) -> bool:
        return self.secret_key == DEV_SECRET_KEY
