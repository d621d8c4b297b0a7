"""A real S3-compatible server (S3Proxy, in Java) for the attachments' S3 tests, started as the Kafka broker
is (bank/infra/kafka.py): its jar comes from Maven Central through the machine's Maven
(``deploy/s3proxy/pom.xml`` copies ``org.gaul:s3proxy:<version>:jar-with-dependencies`` into
``deploy/s3proxy/target/lib``, an ignored cache), and :class:`S3Proxy` runs ``java -jar`` on a free
loopback port with a properties file: AWS Signature V2/V4 checked against one key pair, and objects kept by
jclouds' ``filesystem`` backend under the data folder (or ``transient``: in memory).

Typical use::

    server = S3Proxy(tmp_path / "s3")
    server.start()
    try:
        server.create_bucket("attachments")
        ...  # server.endpoint, server.access_key, server.secret_key
    finally:
        server.stop()
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
from pathlib import Path

import httpx

from bank.infra.java import REPO_ROOT, fetch_jars, java_binary, log_tail
from bank.infra.ports import free_port, port_open
from services.transactions.s3 import SigV4Presigner

log = logging.getLogger(__name__)

DEPLOY_DIR = REPO_ROOT / "deploy" / "s3proxy"
POM_PATH = DEPLOY_DIR / "pom.xml"
JAR = DEPLOY_DIR / "target" / "lib" / "s3proxy.jar"

JVM_OPTS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
"""Small and single-threaded, like the broker's: this is a test server on a 2-core machine."""

REGION = "us-east-1"
"""S3Proxy accepts any region in a V4 signature's scope; the tests sign for this one."""


def ensure_jar(quiet: bool = True) -> Path:
    """Make sure S3Proxy's jar is in ``deploy/s3proxy/target/lib``; return its path
    (bank/infra/java.py: Maven runs only when it is missing or stale)."""
    fetch_jars(DEPLOY_DIR, "S3Proxy's jar", lambda lib: (lib / JAR.name).is_file(), quiet=quiet)
    return JAR


class S3Proxy:
    """One S3Proxy on 127.0.0.1, as a ``java`` subprocess of this process."""

    def __init__(
        self,
        data_dir: Path,
        *,
        backend: str = "filesystem",
        access_key: str = "bank-test-access-key",
        secret_key: str = "bank-test-secret-key",
        port: int | None = None,
    ) -> None:
        if backend not in ("filesystem", "transient"):
            raise ValueError(f"backend is filesystem or transient, not {backend!r}")
        self.data_dir = Path(data_dir).resolve()
        self.backend = backend
        self.access_key = access_key
        self.secret_key = secret_key
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("S3Proxy has no port yet: call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "s3proxy.log"

    def signer(self) -> SigV4Presigner:
        return SigV4Presigner(self.endpoint, REGION, self.access_key, self.secret_key)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Start S3Proxy and wait until it answers HTTP; a RuntimeError quoting its log if it does not."""
        if self.is_running():
            return
        jar = ensure_jar()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        if port_open(self.port, timeout=0.2):
            raise RuntimeError(f"cannot start S3Proxy: 127.0.0.1:{self.port} is already in use")
        objects = self.data_dir / "objects"
        objects.mkdir(exist_ok=True)
        properties = self.data_dir / "s3proxy.conf"
        properties.write_text(
            "# written by bank/infra/s3proxy.py; rewritten on every start\n"
            f"s3proxy.endpoint=http://127.0.0.1:{self.port}\n"
            "s3proxy.authorization=aws-v2-or-v4\n"
            f"s3proxy.identity={self.access_key}\n"
            f"s3proxy.credential={self.secret_key}\n"
            f"jclouds.provider={self.backend}\n"
            f"jclouds.filesystem.basedir={objects}\n"
        )
        cmd = [java_binary(), *JVM_OPTS, "-jar", str(jar), "--properties", str(properties)]
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        began = time.monotonic()
        with self.log_file.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.data_dir
            )
        try:
            self._wait_ready(began + timeout, log_start)
        except BaseException:
            self.stop(timeout=5)
            raise
        log.info(
            "S3Proxy up at %s in %.1fs (pid %s)", self.endpoint, time.monotonic() - began, self._proc.pid
        )

    def _wait_ready(self, deadline: float, log_start: int) -> None:
        assert self.port is not None
        while True:
            if not self.is_running():
                raise RuntimeError(
                    f"S3Proxy exited during start-up; tail of {self.log_file}:\n"
                    f"{log_tail(self.log_file, start=log_start)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"S3Proxy at {self.endpoint} not ready in time; tail of {self.log_file}:\n"
                    f"{log_tail(self.log_file, start=log_start)}"
                )
            if port_open(self.port):
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(self.endpoint + "/", timeout=2)  # any HTTP answer (403 unsigned) will do
                    return
            time.sleep(0.2)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("S3Proxy pid %s ignored SIGTERM for %.0fs; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait(10)

    def create_bucket(self, name: str) -> None:
        """A bucket (an S3 `CreateBucket`, signed with the server's key pair); already there is fine."""
        answer = httpx.put(self.signer().presign("PUT", f"/{name}", 60), timeout=10)
        if answer.status_code != 200 and "BucketAlreadyOwnedByYou" not in answer.text:
            raise RuntimeError(f"cannot create bucket {name}: {answer.status_code} {answer.text[:300]}")

    def __enter__(self) -> S3Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
