"""A whole bank as a newcomer starts it: `bank up` in its own process, with its own data folder.

`bank_env(folder)` is the environment for one such bank: its data under `folder`, a free port for
PostgreSQL and for every service, no database URL inherited from the caller. `BankProcess(env)` runs
`python -m bank.cli up` in it, reads its output, and says when it is up.

A bank whose parts a test breaks one by one (kill a service, restart PostgreSQL, delay accounts) is
`bank.cluster.BankCluster` instead: the bank test, the chaos scenarios and the benchmarks use it too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from bank.infra.ports import free_port
from shared.config import SERVICES


def bank_env(folder: Path, **extra: str) -> dict[str, str]:
    """`bank up`'s environment for a bank of its own under `folder`; `extra` is added last."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BANK_DATABASE_URL")}
    env.update(BANK_DATA_DIR=str(folder / "data"), BANK_PG_PORT=str(free_port()), BANK_LOG_LEVEL="WARNING")
    for name in SERVICES:
        env[f"BANK_{name.upper()}_URL"] = f"http://127.0.0.1:{free_port()}"
    env.update(extra)
    return env


class BankProcess:
    """`bank up` running in `env`; `lines` is everything it has printed so far."""

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

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, as a person stops it; killed if it has not stopped within `timeout`. Its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
