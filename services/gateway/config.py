"""The gateway's own settings (prefix `GATEWAY_`); where the upstreams live comes from BankSettings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROUTES_FILE = Path(__file__).with_name("routes.toml")
DEV_NETWORK_KEY = "dev-network-key"
DEV_OPS_TOKEN = "dev-ops-token"


class RateLimit(BaseModel):
    """A token bucket: `rate` requests per second sustained, bursts of up to `burst`."""

    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


def _default_rate_limits() -> dict[str, RateLimit]:
    return {
        # Per user (or per client IP before sign-in): the Mondo API calls of an app.
        "default": RateLimit(rate=20, burst=100),
        # Sign-up, sign-in and token exchange, per client IP: slows password guessing.
        "auth": RateLimit(rate=2, burst=20),
        # The card network, per client IP: authorisations must not be the thing we throttle.
        "network": RateLimit(rate=2000, burst=4000),
        # The ops page and its data, API docs.
        "ops": RateLimit(rate=5, burst=50),
    }


class GatewaySettings(BaseSettings):
    """`GATEWAY_*` environment variables. Dicts (GATEWAY_RATE_LIMITS) are JSON."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    routes_file: Path = ROUTES_FILE
    # Largest request body accepted (Content-Length or bytes actually read): 413 above it.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # The card network's credential on /network/*; compare with hmac.compare_digest.
    network_api_key: str = Field(default=DEV_NETWORK_KEY, min_length=1)
    # Rate-limit classes named by the route table; "none" in the table means unlimited.
    rate_limits: dict[str, RateLimit] = Field(default_factory=_default_rate_limits)
    # Buckets kept per class before the least recently used ones are forgotten.
    rate_limit_max_keys: int = Field(default=100_000, ge=1)
    # An unknown kid refreshes the JWKS at most this often (garbage kids cannot hammer accounts).
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0)
    # Refresh the JWKS this often anyway (retired keys stop verifying).
    jwks_refresh_seconds: float = Field(default=300.0, gt=0)
    # How often the revocation list is polled.
    revocation_poll_seconds: float = Field(default=2.0, gt=0)
    # Circuit breaker per upstream: consecutive failures that open it, seconds until a trial call.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=5.0, gt=0)
    # Extra attempts for idempotent requests (GET, PUT, DELETE, or with an Idempotency-Key).
    upstream_retries: int = Field(default=1, ge=0)
    # Connections per upstream pool (kept alive between requests).
    upstream_connections: int = Field(default=256, ge=1)
    # "lean": the gateway's HTTP/1.1 transport under ServiceClient; "httpx": httpx's own (httpcore).
    upstream_transport: Literal["lean", "httpx"] = "lean"
    # Past capacity (decision 0036): app requests in flight at most this many (authorisations have an
    # adaptive limit: services/gateway/shedding.py).
    app_in_flight_limit: int = Field(default=256, ge=1)
    # How long an upstream's /openapi.json is reused; a failed fetch is retried after a few seconds.
    openapi_cache_seconds: float = Field(default=60.0, ge=0)
    # The ops credential for /ops (Bearer <token>, or Basic with the token as password).
    ops_token: str = Field(default=DEV_OPS_TOKEN, min_length=1)
    # The ops page scrapes every service's /metrics and /readyz at most this often, however many watch.
    ops_scrape_seconds: float = Field(default=1.0, ge=0.1)
