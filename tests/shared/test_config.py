import os
import subprocess
import sys

import pytest

from shared.config import BankSettings, SettingsError, load


def test_defaults_and_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANK_TRANSPORT", "kafka")
    monkeypatch.setenv("BANK_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    settings = load(BankSettings)
    assert settings.transport == "kafka"
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.port_of("cards") == 8002


def test_database_url_convention_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BANK_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.example:5432/bank")
    settings = load(BankSettings)
    assert settings.async_database_url == "postgresql+asyncpg://u@db.example:5432/bank"


def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANK_TRANSPORT", "carrier-pigeon")
    monkeypatch.setenv("BANK_PG_PORT", "not-a-port")
    with pytest.raises(SettingsError) as err:
        load(BankSettings)
    assert "BANK_TRANSPORT" in str(err.value)
    assert "BANK_PG_PORT" in str(err.value)


def test_a_service_with_bad_settings_stops_with_a_clear_message() -> None:
    env = dict(os.environ, BANK_RELAY_BATCH="lots")
    proc = subprocess.run(
        [sys.executable, "-m", "services.accounts"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "BANK_RELAY_BATCH" in proc.stderr
    assert "Traceback" not in proc.stderr
