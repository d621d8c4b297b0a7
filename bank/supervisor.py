"""`bank up`: one PostgreSQL, migrations, and every service as its own OS process."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from bank.migrate import upgrade
from services.accounts.config import AccountsSettings
from services.cards.config import CardsSettings
from services.gateway.config import GatewaySettings
from shared.config import SERVICES, BankSettings, load

READY_TIMEOUT = 60.0


class AlreadyRunning(Exception):
    pass


def acquire_lock(data_dir: Path) -> IO[str]:
    """An exclusive lock on data_dir/bank.lock, held for the life of this process.

    A second `bank up` on the same data folder fails fast instead of starting a
    second set of services against the same database and ports.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "bank.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def database_url_is_external() -> bool:
    return bool(os.environ.get("DATABASE_URL") or os.environ.get("BANK_DATABASE_URL"))


def start_service(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, start_new_session=True)


def start_services(settings: BankSettings, env: dict[str, str]) -> dict[str, subprocess.Popen[bytes]]:
    order = [s for s in SERVICES if s != "gateway"] + ["gateway"]
    return {name: start_service(name, env) for name in order}


class Restarts:
    """A crashed service is started again, like a container under an orchestrator: at once the
    first time, then after a doubling pause (up to a minute) while it keeps crashing; a service
    that stayed up for a minute starts afresh."""

    STABLE_SECONDS = 60.0
    MAX_PAUSE = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._pause: dict[str, float] = {}
        self._last_start: dict[str, float] = {}
        self._not_before: dict[str, float] = {}

    def due(self, name: str) -> bool:
        now = self.clock()
        if name not in self._not_before:  # just noticed: decide when it may start again
            stable = now - self._last_start.get(name, -self.STABLE_SECONDS) >= self.STABLE_SECONDS
            pause = 0.0 if stable else min(max(self._pause.get(name, 0.0) * 2, 1.0), self.MAX_PAUSE)
            self._pause[name] = pause
            self._not_before[name] = now + pause
        return now >= self._not_before[name]

    def started(self, name: str) -> None:
        self._last_start[name] = self.clock()
        self._not_before.pop(name, None)


FAKE_PUSH_PORT = 8010

# Webhook receivers a development bank may call although they are loopback (the SSRF guard in
# services/webhooks/ssrf.py refuses them otherwise): a receiver on the developer's own machine.
DEV_WEBHOOK_NETWORKS = ["127.0.0.0/8", "::1/128"]


def webhook_networks(env: dict[str, str]) -> str:
    try:
        return ", ".join(json.loads(env.get("WEBHOOKS_ALLOW_NETWORKS", "[]"))) or "none"
    except (ValueError, TypeError):
        return env.get("WEBHOOKS_ALLOW_NETWORKS", "")


def _free_port(preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port (a second bank, the e2e tests)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ISO8583_PORT = 8583


def choose_iso8583_port(env: dict[str, str]) -> int:
    """The port of cards' ISO 8583 link (docs/iso8583.md): CARDS_ISO8583_PORT if set, else 8583 when
    free, else any free port; put in `env` so that a restarted cards listens on the same one."""
    if value := env.get("CARDS_ISO8583_PORT"):
        return int(value)
    port = _free_port(ISO8583_PORT)
    env["CARDS_ISO8583_PORT"] = str(port)
    return port


def start_fake_push(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str] | None:
    """The local APNs/FCM stand-in (services/notifications/providers/fake.py), its URL given to
    notifications through `env`; none when real provider URLs are already configured."""
    if env.get("NOTIFICATIONS_APNS_URL") or env.get("NOTIFICATIONS_FCM_URL"):
        return None
    port = _free_port(FAKE_PUSH_PORT)
    url = f"http://127.0.0.1:{port}"
    env.update(NOTIFICATIONS_APNS_URL=url, NOTIFICATIONS_FCM_URL=url)
    env.update(NOTIFICATIONS_FCM_TOKEN_URI=f"{url}/token")
    command = [sys.executable, "-m", "services.notifications.providers.fake", "--port", str(port)]
    return subprocess.Popen(command, env=env, start_new_session=True), url


def usable(name: str, readyz: httpx.Response) -> bool:
    """Ready, and for the gateway also holding accounts' token keys: the gateway stays ready without
    them (the card network does not need them), but "the bank is up" promises a working API."""
    if readyz.status_code != 200:
        return False
    if name != "gateway":
        return True
    try:
        return bool(readyz.json()["checks"]["identity"]["jwks_loaded"] == "yes")
    except (ValueError, KeyError, TypeError):
        return False


def wait_until_ready(settings: BankSettings, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    pending = set(procs)
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(timeout=1.0) as client:
        while pending:
            for name in sorted(pending):
                code = procs[name].poll()
                if code is not None:
                    raise RuntimeError(f"{name} exited with code {code} during start-up (see its log above)")
                try:
                    if usable(name, client.get(f"{settings.url_of(name)}/readyz")):
                        pending.discard(name)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {READY_TIMEOUT:.0f}s: {', '.join(sorted(pending))}")
            if pending:
                time.sleep(0.1)


def stop_services(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def run_bank(settings: BankSettings, *, kafka_bootstrap: str | None = None) -> int:
    started = time.monotonic()
    data_dir = Path(settings.data_dir).resolve()
    try:
        lock = acquire_lock(data_dir)
    except AlreadyRunning as exc:
        print(f"The bank is already running from {data_dir} ({exc}). Stop it with Ctrl-C in its terminal.")
        return 1

    pg = None
    database_url = settings.database_url
    if not database_url_is_external():
        from bank.infra.postgres import EmbeddedPostgres

        pg = EmbeddedPostgres(data_dir / "postgres", settings.pg_port)
        print(f"starting PostgreSQL (embedded, data in {pg.data_dir}) on port {pg.port}")
        pg.start()
        database_url = pg.create_database("bank")

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    fake_push: tuple[subprocess.Popen[bytes], str] | None = None
    try:
        upgrade(database_url)
        env = dict(os.environ, BANK_DATABASE_URL=database_url, BANK_DATA_DIR=str(data_dir))
        if kafka_bootstrap:
            env.update(BANK_TRANSPORT="kafka", BANK_KAFKA_BOOTSTRAP=kafka_bootstrap)
        # `bank up` runs a development bank: webhooks may go to plain-http receivers on this machine
        # (production refuses both: https only, and loopback or private addresses only when
        # WEBHOOKS_ALLOW_NETWORKS names them).
        env.setdefault("WEBHOOKS_ALLOW_HTTP", "true")
        env.setdefault("WEBHOOKS_ALLOW_NETWORKS", json.dumps(DEV_WEBHOOK_NETWORKS))
        fake_push = start_fake_push(env)
        link = f"{env.get('CARDS_ISO8583_HOST') or settings.host}:{choose_iso8583_port(env)}"
        procs = start_services(settings, env)
        wait_until_ready(settings, procs)
        transport = env.get("BANK_TRANSPORT", settings.transport)
        print(
            f"\nThe bank is up in {time.monotonic() - started:.1f}s (transport: {transport}).\n"
            f"  API        {settings.gateway_url}\n"
            f"  API docs   {settings.gateway_url}/docs\n"
            f"  ops page   {settings.gateway_url}/ops\n"
            f"  services   "
            + ", ".join(f"{n} {settings.url_of(n)}" for n in SERVICES if n != "gateway")
            + f"\n  mobile app OAuth client id: {load(AccountsSettings).first_party_client_id}"
            + f"\n  card network key (x-network-key): {load(GatewaySettings).network_api_key}"
            + f"\n  card network ISO 8583 link: {link}"
            + f" (sign-on key: {load(CardsSettings).network_api_key}; docs/iso8583.md)"
            + "\n  a customer to try the API as: .venv/bin/bank demo"
            + f"\n  webhooks   receivers may be plain http and on this machine ({webhook_networks(env)});"
            + " a development bank: production refuses both"
            + (f"\n  pushes     {fake_push[1]} (the local fake APNs/FCM)" if fake_push else "")
            + "\nPress Ctrl-C to stop.",
            flush=True,
        )
        restarts = Restarts()
        while not stopping:
            for name, proc in list(procs.items()):
                if proc.poll() is not None and restarts.due(name):
                    print(f"{name} stopped (exit code {proc.returncode}); restarting it", file=sys.stderr)
                    procs[name] = start_service(name, env)
                    restarts.started(name)
            time.sleep(0.2)
        return 0
    except RuntimeError as exc:
        print(f"bank up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping services…", flush=True)
        stop_services({**procs, **({"fake-push": fake_push[0]} if fake_push else {})})
        if pg is not None:
            pg.stop()
        lock.close()
        print("stopped.")
