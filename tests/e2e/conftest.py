"""Running the bank as a newcomer does: `bank up` in its own process, with its own data folder
(tests/support/bank.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bank import bank_env as env_for


@pytest.fixture
def bank_env(tmp_path: Path) -> dict[str, str]:
    return env_for(tmp_path)
