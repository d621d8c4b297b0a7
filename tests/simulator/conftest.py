"""The simulator's tests against a real bank start it the way tests/e2e does (`bank up` as a process).

The data folder is not under pytest's temporary root: as root, pytest makes that owner-only, which
locks the embedded PostgreSQL's own (non-root) user out (see tests/conftest.py's pg_server)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bank.cluster import LIFTED_LIMITS
from tests.support.bank import bank_env


@pytest.fixture
def sim_bank_env() -> Iterator[dict[str, str]]:
    folder = Path(tempfile.mkdtemp(prefix="bank-sim-test-"))
    # 20 sign-ups at once; the default is 2/s per client.
    yield bank_env(folder, GATEWAY_RATE_LIMITS=LIFTED_LIMITS)
    shutil.rmtree(folder, ignore_errors=True)
