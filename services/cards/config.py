"""Cards' own settings (prefix `CARDS_`).

The three keys default to values derived from a fixed label, so every process
of a development bank agrees on them without configuration. Anyone who reads
this file can derive them: production must set CARDS_ENCRYPTION_KEY,
CARDS_FINGERPRINT_KEY and CARDS_CVC_KEY (base64 of 32 random bytes each,
e.g. `python -c "import os, base64; print(base64.b64encode(os.urandom(32)).decode())"`).
The service logs a warning at start-up while any of them is a development default.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from pydantic import Field, IPvAnyNetwork, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_NETWORK_KEY = "dev-network-key"
KEY_BYTES = 32


def dev_key(purpose: str) -> str:
    """A development key: deterministic, public, never for production."""
    return base64.b64encode(
        hashlib.sha256(f"mondo-bank development key: cards {purpose}".encode()).digest()
    ).decode()


DEV_KEYS = {name: dev_key(name) for name in ("encryption", "fingerprint", "cvc")}


def decode_key(value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"must decode to {KEY_BYTES} bytes, not {len(raw)}")
    return raw


class CardsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARDS_", extra="ignore")

    # Issuer identification number: the PAN's first digits (a Mastercard range by default).
    bin: str = Field(default="535522", pattern=r"^[2-6][0-9]{5,7}$")
    encryption_key: str = DEV_KEYS["encryption"]  # AES-256-GCM key for PANs at rest
    fingerprint_key: str = DEV_KEYS["fingerprint"]  # HMAC-SHA256 key: PAN -> lookup fingerprint
    cvc_key: str = DEV_KEYS["cvc"]  # HMAC-SHA256 key for the stored CVC digest
    network_api_key: str = Field(default=DEV_NETWORK_KEY, min_length=1)
    card_validity_years: int = Field(default=3, ge=1, le=10)

    # The authorisation's one call to accounts: its whole budget, retries included. The network waits
    # 2-3 s; on a busy host a 150 ms budget turned slow approvals into 91 declines (decision 0009).
    accounts_deadline_ms: int = Field(default=600, ge=10, le=10_000)
    accounts_connections: int = Field(default=200, ge=1)
    # Authorisations decided together at most (whatever queued while the last batch was in flight,
    # decision 0030), and how long one may wait for its batch before it is refused with a 429 (the
    # gateway gives /network 2 s).
    authorisation_batch_max: int = Field(default=500, ge=1, le=1000)
    authorisation_queue_seconds: float = Field(default=1.0, gt=0)
    # Past capacity (decision 0036): a batch is sized to take about this long, and while a queue
    # stands, an authorisation that has waited longer than the overload wait is refused at once (429
    # `rate_limited.overloaded`, nothing decided) instead of being decided after the network gave up.
    # Not shorter: a batch's time is mostly fixed round trips, so a tighter budget caps batches below
    # what the load needs and refuses payments the bank could have decided (measured: at 50 ms the
    # whole bank refused half of what a 50-connection closed loop sent, and collapsed at 200/s offered).
    authorisation_batch_budget_ms: int = Field(default=250, ge=1)
    authorisation_overload_wait_ms: int = Field(default=250, ge=1)
    # Consecutive failures that open the circuit to accounts, and how long it stays open. Tripping on
    # a handful of slow calls turns a latency blip into seconds of blanket 91s; at 100/s, 10 failures
    # still open it within a tenth of a second when accounts is really gone.
    accounts_breaker_failures: int = Field(default=10, ge=1)
    accounts_breaker_reset_seconds: float = Field(default=1.0, gt=0)

    # Clearing may exceed the authorised amount by this share of it (tips, taxis).
    over_capture_percent: int = Field(default=15, ge=0, le=100)
    hospitality_over_capture_percent: int = Field(default=20, ge=0, le=100)
    hospitality_mccs: frozenset[str] = frozenset({"5812", "5813", "5814", "4121"})
    hold_days: int = Field(default=7, ge=1)
    long_hold_days: int = Field(default=31, ge=1)  # lodging and car rental

    # Releasing holds the accounts call may have left behind (issuer unavailable, 91).
    compensation_poll_seconds: float = Field(default=1.0, gt=0)
    # A release that finds no hold is retried this long: a late hold request may still land.
    compensation_settle_seconds: float = Field(default=60.0, ge=0)
    # A partial reversal's new hold is released this long after it was asked for, unless the
    # reversal committed (a crash in between would otherwise leave it blocking money).
    rehold_in_doubt_seconds: float = Field(default=60.0, ge=0)

    # Card holders' access tokens: accounts' JWKS and revocation list.
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0)
    revocation_poll_seconds: float = Field(default=2.0, gt=0)

    # The card network's ISO 8583 link (services/cards/iso8583, docs/iso8583.md): its own TCP port (0: any
    # free one, for tests), the addresses allowed to connect, how long a new connection has to sign on,
    # how long a link may stay silent (the network sends 0800/301 echoes), and how many messages one link
    # may have in flight before cards stops reading from it.
    iso8583_enabled: bool = True
    iso8583_host: str | None = None  # default: BANK_HOST
    iso8583_port: int = Field(default=8583, ge=0, le=65535)
    iso8583_allow_networks: tuple[IPvAnyNetwork, ...] = Field(
        default=("127.0.0.0/8", "::1/128"),  # type: ignore[arg-type]
        description="JSON list of CIDRs, e.g. CARDS_ISO8583_ALLOW_NETWORKS='[\"10.20.0.0/16\"]'",
    )
    iso8583_sign_on_seconds: float = Field(default=10.0, gt=0)
    iso8583_idle_seconds: float = Field(default=120.0, gt=0)
    iso8583_max_in_flight: int = Field(default=2_000, ge=1)

    @field_validator("encryption_key", "fingerprint_key", "cvc_key")
    @classmethod
    def _is_a_key(cls, value: str) -> str:
        decode_key(value)
        return value

    def dev_keys_in_use(self) -> list[str]:
        return [
            f"CARDS_{name.upper()}_KEY"
            for name, default in DEV_KEYS.items()
            if getattr(self, f"{name}_key") == default
        ]
