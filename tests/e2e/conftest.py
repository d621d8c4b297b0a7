"""Running the bank as a newcomer does: `bank up` in its own process, with its own data folder."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bank.infra.ports import free_port
from shared.config import SERVICES


class BankProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bank.cli", "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "The bank is up" in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 120) -> None:
        if not self.ready.wait(timeout):
            raise AssertionError("bank up never became ready:\n" + "".join(self.lines[-40:]))

    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def bank_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BANK_DATABASE_URL")}
    env.update(BANK_DATA_DIR=str(tmp_path / "data"), BANK_PG_PORT=str(free_port()), BANK_LOG_LEVEL="WARNING")
    for name in SERVICES:
        env[f"BANK_{name.upper()}_URL"] = f"http://127.0.0.1:{free_port()}"
    yield env
