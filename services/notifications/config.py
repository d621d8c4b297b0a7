"""Notifications' own settings (prefix `NOTIFICATIONS_`).

Provider base URLs default to Apple's and Google's production endpoints; `bank up` points them at the
local fake provider (services/notifications/providers/fake.py) instead. Credentials default to
development values (a deterministic APNs key anyone can derive, an FCM service-account key generated at
start-up): real providers refuse them, the fake accepts them. The service logs a warning while any is a
development default.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_TEAM_ID = "DEVTEAM000"
DEV_KEY_ID = "DEVKEY0000"
DEV_CLIENT_EMAIL = "push@bank-dev.iam.gserviceaccount.com"


def dev_apns_key() -> str:
    """A development APNs signing key (P-256, PEM): deterministic, public, never for production."""
    seed = hashlib.sha256(b"mondo-bank development key: notifications apns").digest()
    scalar = int.from_bytes(seed, "big") % (2**255)
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class NotificationsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_", extra="ignore")

    # APNs (HTTP/2, token-based provider authentication).
    apns_url: str = "https://api.push.apple.com"  # sandbox: https://api.sandbox.push.apple.com
    apns_topic: str = "com.example.bank"  # the app's bundle id
    apns_team_id: str = DEV_TEAM_ID
    apns_key_id: str = DEV_KEY_ID
    apns_key: str = ""  # the .p8 signing key's PEM text; empty: apns_key_file, else the development key
    apns_key_file: str = ""
    # Apple: refresh the provider token no more than once every 20 minutes, no less than once an hour.
    apns_token_refresh_seconds: float = Field(default=50 * 60, gt=0, lt=60 * 60)
    apns_expiration_seconds: int = Field(default=24 * 3600, ge=0)

    # FCM HTTP v1 (OAuth2 bearer from a service account).
    fcm_url: str = "https://fcm.googleapis.com"
    fcm_project_id: str = "bank-dev"
    fcm_service_account_file: str = ""  # Google's JSON key file; empty: the settings below
    fcm_client_email: str = DEV_CLIENT_EMAIL
    fcm_private_key: str = ""  # RSA PEM; empty: one is generated at start-up (development only)
    fcm_token_uri: str = "https://oauth2.googleapis.com/token"
    fcm_ttl_seconds: int = Field(default=24 * 3600, ge=0)

    # Sending.
    provider_timeout_seconds: float = Field(default=10.0, gt=0)
    send_concurrency: int = Field(default=8, ge=1, le=64)  # workers, each with at most one batch in flight
    send_batch_size: int = Field(default=50, ge=1, le=500)  # deliveries claimed (and sent) per transaction
    poll_seconds: float = Field(default=0.5, gt=0)  # the worker's fallback poll when not woken
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=1.0, ge=0)  # doubled on each retry
    retry_max_seconds: float = Field(default=300.0, ge=0)
    retry_after_max_seconds: float = Field(default=3600.0, ge=0)  # cap on a provider's Retry-After

    # Feed items and devices.
    feed_page_size: int = Field(default=100, ge=1, le=1000)
    max_devices_per_user: int = Field(default=20, ge=1)

    # Access tokens: accounts' JWKS and revocation list; ownership checks at accounts.
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0)
    revocation_poll_seconds: float = Field(default=2.0, gt=0)
    accounts_timeout_seconds: float = Field(default=2.0, gt=0)

    def apns_key_pem(self) -> str:
        if self.apns_key.strip():
            return self.apns_key
        if self.apns_key_file:
            with open(self.apns_key_file) as f:
                return f.read()
        return dev_apns_key()

    def dev_credentials_in_use(self) -> list[str]:
        dev = []
        if not self.apns_key.strip() and not self.apns_key_file:
            dev.append("NOTIFICATIONS_APNS_KEY")
        if not self.fcm_service_account_file and not self.fcm_private_key.strip():
            dev.append("NOTIFICATIONS_FCM_SERVICE_ACCOUNT_FILE")
        return dev
