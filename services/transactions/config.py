"""Transactions' own settings (prefix `TRANSACTIONS_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TransactionsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRANSACTIONS_", extra="ignore")

    # Merchant logos: `<logo_base_url>/<merchant-name-slug>.png`.
    logo_base_url: str = "https://logos.mondo.example/merchants"
    # GET /transactions: the page size when `limit` is not given, and the largest allowed.
    default_limit: int = Field(default=30, ge=1, le=100)
    max_limit: int = Field(default=100, ge=1, le=1000)
    # The feed consumer's batch (events per database transaction).
    consumer_batch: int = Field(default=200, ge=1, le=5000)
    # Card holders' access tokens: accounts' JWKS and revocation list.
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0)
    revocation_poll_seconds: float = Field(default=2.0, gt=0)
