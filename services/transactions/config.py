"""Transactions' own settings (prefix `TRANSACTIONS_`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CONSUMER_BATCH


class TransactionsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRANSACTIONS_", extra="ignore")

    # Merchant logos: `<logo_base_url>/<merchant-name-slug>.png`.
    logo_base_url: str = "https://logos.mondo.example/merchants"
    # GET /transactions: the page size when `limit` is not given, and the largest allowed.
    default_limit: int = Field(default=30, ge=1, le=100)
    max_limit: int = Field(default=100, ge=1, le=1000)
    # The feed consumer's batch (events per database transaction): large, so that a backlog drains in
    # few round trips, each of which a consumer under SCHED_IDLE waits for a free CPU after (decision 0048).
    consumer_batch: int = Field(default=CONSUMER_BATCH, ge=1, le=5000)
    # Card holders' access tokens: accounts' JWKS and revocation list.
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0)
    revocation_poll_seconds: float = Field(default=2.0, gt=0)
    # Attachments (decision 0037): the embedded object store's folder (default: <BANK_DATA_DIR>/attachments),
    # the public address its signed URLs are on (default: BANK_GATEWAY_URL), the key that signs them (set it
    # in production: one value for every replica), and how long an upload or download URL lasts.
    storage_folder: str | None = None
    storage_public_url: str | None = None
    storage_secret: str = Field(default="dev-storage-secret", min_length=1)
    storage_url_seconds: float = Field(default=900.0, gt=0, le=7 * 24 * 3600)
    # Which object store (decision 0046): `local`, the embedded one above; `s3`, a bucket (path-style
    # addresses on `storage_s3_endpoint`, e.g. https://s3.eu-west-2.amazonaws.com) behind presigned URLs
    # that last `storage_url_seconds`, signed with this key pair (an IAM user's, allowed s3:PutObject and
    # s3:GetObject on the bucket).
    storage: Literal["local", "s3"] = "local"
    storage_s3_endpoint: str | None = None
    storage_s3_bucket: str | None = None
    storage_s3_region: str = "us-east-1"
    storage_s3_access_key: str | None = None
    storage_s3_secret_key: str | None = None

    @model_validator(mode="after")
    def _s3_is_complete(self) -> TransactionsSettings:
        if self.storage == "s3":
            missing = [
                f"TRANSACTIONS_STORAGE_S3_{name.upper()}"
                for name in ("endpoint", "bucket", "access_key", "secret_key")
                if not getattr(self, f"storage_s3_{name}")
            ]
            if missing:
                raise ValueError(f"TRANSACTIONS_STORAGE=s3 needs {', '.join(missing)}")
            endpoint = self.storage_s3_endpoint or ""
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError("TRANSACTIONS_STORAGE_S3_ENDPOINT is http(s)://host[:port]")
        return self
