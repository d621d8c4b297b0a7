"""The simulator's tests against a real bank start it the way tests/e2e does (`bank up` as a process).

The data folder is not under pytest's temporary root: as root, pytest makes that owner-only, which
locks the embedded PostgreSQL's own (non-root) user out (see tests/conftest.py's pg_server)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bank.cluster import LIFTED_LIMITS
from bank.infra.ports import free_port
from shared.config import SERVICES
from tests.e2e.conftest import BankProcess

__all__ = ["BankProcess"]


@pytest.fixture
def sim_bank_env() -> Iterator[dict[str, str]]:
    folder = Path(tempfile.mkdtemp(prefix="bank-sim-test-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BANK_DATABASE_URL")}
    env.update(BANK_DATA_DIR=str(folder / "data"), BANK_PG_PORT=str(free_port()), BANK_LOG_LEVEL="WARNING")
    env["GATEWAY_RATE_LIMITS"] = LIFTED_LIMITS  # 20 sign-ups at once; the default is 2/s per client
    for name in SERVICES:
        env[f"BANK_{name.upper()}_URL"] = f"http://127.0.0.1:{free_port()}"
    yield env
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A scratch folder the embedded PostgreSQL's user can enter."""
    folder = Path(tempfile.mkdtemp(prefix="bank-sim-chaos-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
