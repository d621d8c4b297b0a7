"""Typed settings from environment variables (12-factor).

Every service has its own prefix (`ACCOUNTS_`, `CARDS_`, …); settings common to
the whole bank use `BANK_`. A bad or missing variable stops start-up with a
message that names the variable, never a traceback.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("gateway", "accounts", "cards", "transactions", "webhooks", "notifications")
# Event consumers: their work can wait, the card network's cannot (decision 0036).
BACKGROUND_SERVICES = ("transactions", "webhooks", "notifications")
# Events a consumer takes in one transaction: a backlog drains in few round trips (decision 0048).
CONSUMER_BATCH = 1000


class BankSettings(BaseSettings):
    """Settings shared by every process of the bank (prefix `BANK_`)."""

    model_config = SettingsConfigDict(env_prefix="BANK_", extra="ignore")

    # DATABASE_URL (the usual convention) is accepted as well as BANK_DATABASE_URL.
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:54329/bank",
        validation_alias=AliasChoices("BANK_DATABASE_URL", "DATABASE_URL"),
    )
    transport: Literal["pglog", "kafka"] = "pglog"
    kafka_bootstrap: str = "127.0.0.1:9092"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    host: str = "127.0.0.1"
    # Where `bank up` keeps the embedded PostgreSQL (and Kafka) data between runs.
    data_dir: str = ".data"
    pg_port: int = 54329
    db_pool_size: int = 10
    # Shared secret on service-to-service routes (/internal/*). The gateway never forwards them.
    internal_token: str = "dev-internal-token"
    relay_batch: int = 500
    relay_poll_seconds: float = 0.5
    # The outbox relay publishes at most once per this many ms (decision 0024); 0: after every commit.
    relay_linger_ms: float = Field(default=20.0, ge=0)
    # A consumer handles at most one batch per this many ms (decision 0028); 0: as records arrive.
    consumer_linger_ms: float = Field(default=50.0, ge=0)
    # "idle": the event consumers (and their PostgreSQL backends, when the server is on this host)
    # run only on CPU the card path leaves (SCHED_IDLE; decisions 0036, 0047); "normal": like the rest.
    background_priority: Literal["idle", "normal"] = "idle"
    # Service discovery by configuration: one base URL per service (replicas may sit behind it).
    gateway_url: str = "http://127.0.0.1:8000"
    accounts_url: str = "http://127.0.0.1:8001"
    cards_url: str = "http://127.0.0.1:8002"
    transactions_url: str = "http://127.0.0.1:8003"
    webhooks_url: str = "http://127.0.0.1:8004"
    notifications_url: str = "http://127.0.0.1:8005"

    def url_of(self, service: str) -> str:
        return str(getattr(self, f"{service}_url"))

    def port_of(self, service: str) -> int:
        return int(self.url_of(service).rsplit(":", 1)[1].split("/", 1)[0])

    @property
    def async_database_url(self) -> str:
        return to_asyncpg(self.database_url)


class SettingsError(SystemExit):
    """Raised (as a clean exit) when the environment does not hold valid settings."""


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """Build settings or stop with a message naming each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "") or ""
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {prefix}{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        # SystemExit prints this to stderr and exits 1: a clear message, no traceback.
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None


def to_asyncpg(url: str) -> str:
    for plain in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


def to_libpq(url: str) -> str:
    """A plain libpq URL (for psql, psycopg and asyncpg.connect)."""
    for driver in ("postgresql+asyncpg://", "postgresql+psycopg://"):
        if url.startswith(driver):
            return "postgresql://" + url[len(driver) :]
    return url
