"""The README, run as written: its shell examples, in order, in one shell, against a bank that `bank up`
(what `make run` runs) started in its own process.

Every ```sh block of README.md runs unless the line before it is an HTML comment saying why not
(`<!-- not run by tests/e2e/test_readme.py: … -->`: the two make commands, long-running or
bank-starting commands). The one liberty taken is the addresses: this bank, the local fake APNs/FCM
and the webhook receiver listen on free ports, so the README's 8000, 8010 and 9000 are rewritten to
them. Every curl is run with --fail-with-body, so an example the bank answers with an error stops the
script, and the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bank.infra.ports import free_port
from tests.support.bank import BankProcess

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*not run by tests/e2e/test_readme\.py:\s*(.+?)\s*-->\s*$")
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)

# What the shell runs before the README's lines: stop at the first failing command or HTTP error.
PRELUDE = """\
set -euo pipefail
curl() { command curl --fail-with-body --max-time 60 "$@"; }
"""


def readme_blocks(text: str) -> list[tuple[str, str | None]]:
    """Each ```sh block's text, and why it is not run (None: it is run)."""
    blocks: list[tuple[str, str | None]] = []
    for match in BLOCK.finditer(text):
        if match[1] != "sh":
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = SKIP.match(before.strip())
        blocks.append((match[2], reason[1] if reason else None))
    return blocks


def test_the_readme_blocks_are_found() -> None:
    blocks = readme_blocks(README.read_text())
    run = [body for body, reason in blocks if reason is None]
    assert len(run) >= 4, "the README's runnable examples were not found"
    assert any("make run" in body for body, reason in blocks if reason), "the two commands' block is gone"
    script = "\n".join(run)
    for needed in ("bank demo", "/topup", "/cards", "/network/authorisations", "/transactions",
                   "/webhooks", "webhook_receiver.py", "/devices", "/_fake/received", "/pots",
                   "/payments", "/attachment/register", "/transaction-receipts"):  # fmt: skip
        assert needed in script, f"no README example runs {needed}"
    assert "uuidgen" not in README.read_text()


@pytest.fixture
def receiver_port() -> int:
    return free_port()


def test_the_readme_examples_work_as_written(bank_env: dict[str, str], receiver_port: int) -> None:
    assert shutil.which("curl") and shutil.which("jq"), "the README's examples need curl and jq"
    bank = BankProcess(bank_env)
    try:
        bank.wait_ready()
        up = bank.output()
        # What `make run` says about webhooks: a development bank calls receivers on this machine.
        assert "webhooks   receivers may be plain http and on this machine (127.0.0.0/8, ::1/128)" in up
        [pushes] = re.findall(r"pushes\s+(http://127\.0\.0\.1:\d+) \(the local fake APNs/FCM\)", up)

        gateway = bank_env["BANK_GATEWAY_URL"]
        script = "\n".join(body for body, reason in readme_blocks(README.read_text()) if reason is None)
        script = (
            script.replace("http://127.0.0.1:8000", gateway)
            .replace("http://127.0.0.1:8010", pushes)
            .replace("127.0.0.1:9000", f"127.0.0.1:{receiver_port}")
            .replace("--port 9000", f"--port {receiver_port}")
        )
        ports = {gateway.rsplit(":", 1)[1], pushes.rsplit(":", 1)[1], str(receiver_port)}
        assert set(re.findall(r"127\.0\.0\.1:(\d+)", script)) <= ports, "an address the test does not map"
        venv_bin = str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin")
        env = {**bank_env, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
        ran = subprocess.run(
            ["bash", "-c", PRELUDE + script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            start_new_session=True,
        )
        out = ran.stdout + ran.stderr
        assert ran.returncode == 0, f"a README example failed (exit {ran.returncode}):\n{out[-6000:]}"

        # The demo customer, the top-up, the card, the network's answer, the webhook, the push, the feed.
        assert "A demo customer:" in ran.stderr and "access_token" in ran.stderr
        assert '"topup":{' in ran.stdout.replace(" ", "")
        assert '"pan":"535522' in ran.stdout.replace(" ", "")
        assert re.search(r'"mti":\s*"0110".*"response_code":\s*"00"', ran.stdout), ran.stdout
        assert re.search(r"verified transaction\.created tx_\w+", ran.stdout), out
        assert "BRIGHTBIRD" in ran.stdout or "Brightbird" in ran.stdout
        assert re.search(r'"body":\s*".*19\.15', ran.stdout), out  # the push at the fake provider
        assert '"status":"frozen"' in ran.stdout.replace(" ", ""), out
        # Pots, a payment to another customer, an attachment and a receipt on the coffee.
        compact = ran.stdout.replace(" ", "")
        assert '"name":"Holiday"' in compact and '"balance":2500' in compact, out
        assert '"reference":"pizza"' in compact, out
        assert re.search(r'"file_type":\s*"image/png"', ran.stdout), out
        assert '"receipt_id":"receipt_' in compact and '"total_matches_items":true' in compact, out
    finally:
        code = bank.stop()
    assert code == 0, bank.output()[-3000:]
