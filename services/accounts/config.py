"""Accounts' own settings (prefix `ACCOUNTS_`)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class AccountsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACCOUNTS_", extra="ignore")

    topup_min: int = 1  # minor units
    topup_max: int = 500_000  # £5,000
    hold_default_expiry_days: int = 7
    expiry_job_seconds: float = 60.0
    # Provisional holds (card authorisations) are resolved with cards once this old, every
    # `unconfirmed_job_seconds`: a hold no recorded authorisation stands behind is released within
    # the sum of the two (decision 0031). Far longer than a batch's deadline.
    unconfirmed_hold_seconds: float = 10.0
    unconfirmed_job_seconds: float = 5.0
    # Payments between customers: what one account may send in a day (from 04:00 London), minor units.
    p2p_daily_limit: int = 250_000  # £2,500

    # Identity
    access_token_seconds: int = 21_600  # six hours, as Monzo's tokens
    refresh_token_days: int = 90
    auth_code_seconds: int = 300
    # PEM of an Ed25519 private key. Unset: a key is generated once and kept in the database.
    signing_key_pem: str | None = None
    first_party_client_id: str = "oauthclient_mondo_app"
