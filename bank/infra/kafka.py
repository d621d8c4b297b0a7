"""A real Apache Kafka broker (KRaft mode, no ZooKeeper, no Docker) for tests and local development.

The broker's jars come from Maven Central through the machine's Maven: ``deploy/kafka/pom.xml`` depends on
``org.apache.kafka:kafka_2.13`` and copies every runtime jar into ``deploy/kafka/target/lib``
(:func:`ensure_jars`). :class:`KafkaBroker` then writes a ``server.properties`` for a single combined
broker+controller node on loopback, formats the storage once, and runs ``java -cp 'lib/*' kafka.Kafka``.

Typical use::

    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    try:
        create_topic(broker.bootstrap, "ledger.events")
        ...
    finally:
        broker.stop()

For a broker that outlives the calling process (a CLI ``up``/``down``), use :func:`up` and :func:`down`;
they keep a pid file in the data directory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bank.infra.java import REPO_ROOT, fetch_jars, java_binary, log_tail
from bank.infra.ports import free_port, port_open

log = logging.getLogger(__name__)

KAFKA_DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"
POM_PATH = KAFKA_DEPLOY_DIR / "pom.xml"
LIB_DIR = KAFKA_DEPLOY_DIR / "target" / "lib"
LOG4J_CONFIG = KAFKA_DEPLOY_DIR / "log4j2.properties"

PID_FILE_NAME = "broker.pid"
LOG_FILE_NAME = "broker.log"
PROPERTIES_FILE_NAME = "server.properties"
LOG_DIRS_NAME = "logs"
NODE_ID = 1

JVM_OPTS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
"""JVM flags for the broker: a small heap, a single-threaded GC and the C1 JIT only, to stay light on a
2-core machine (C1 alone starts ~1.5 s faster and uses ~40% less CPU while starting). Flags in the
environment variable ``BANK_KAFKA_JVM_OPTS`` are appended and win, e.g. ``-XX:TieredStopAtLevel=4`` for the
full JIT in a benchmark."""
JVM_OPTS_ENV = "BANK_KAFKA_JVM_OPTS"


def ensure_jars(quiet: bool = True) -> Path:
    """Make sure the broker's runtime jars are in ``deploy/kafka/target/lib``; return that directory
    (bank/infra/java.py: Maven runs only when they are missing or stale)."""
    return fetch_jars(
        KAFKA_DEPLOY_DIR,
        "the Kafka broker's jars",
        lambda lib: any(lib.glob("kafka_2.13-*.jar")),
        quiet=quiet,
    )


def _new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, not starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _admin(bootstrap: str, timeout_ms: int = 10_000) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="bank-infra-kafka",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )


class KafkaBroker:
    """One combined broker+controller KRaft node on 127.0.0.1, running as a ``java`` subprocess.

    Ports are chosen on the first :meth:`start` (unless given) and then kept, so ``stop()`` followed by
    ``start()`` restarts the broker on the same address with the same data.
    """

    def __init__(self, data_dir: Path, port: int | None = None, controller_port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # a broker started by another process (attached via the pid file)

    # -- paths -----------------------------------------------------------------------------------------
    @property
    def properties_file(self) -> Path:
        return self.data_dir / PROPERTIES_FILE_NAME

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE_NAME

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE_NAME

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / LOG_DIRS_NAME

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise RuntimeError("the broker has no port yet: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        return self._pid

    def __repr__(self) -> str:
        return f"KafkaBroker(data_dir={self.data_dir!s}, port={self.port}, pid={self.pid})"

    # -- lifecycle -------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        if self._pid is not None:
            return _alive(self._pid)
        return False

    def start(self, timeout: float = 60, *, detach: bool = False) -> None:
        """Start the broker and wait until it serves metadata; a no-op if it is already running.

        ``detach=True`` puts the JVM in its own session so it outlives the calling process (see :func:`up`).
        Raises RuntimeError quoting the tail of the broker log if it does not come up within ``timeout``.
        """
        if self.is_running():
            return
        lib = ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        if self.controller_port is None:
            self.controller_port = free_port()
            while self.controller_port == self.port:
                self.controller_port = free_port()
        if port_open(self.port, timeout=0.2):
            raise RuntimeError(f"cannot start Kafka: 127.0.0.1:{self.port} is already in use")
        self._write_properties()
        classpath = f"{lib}/*"
        if not (self.log_dirs / "meta.properties").is_file():
            self._format(classpath)

        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        cmd = [
            java_binary(),
            *JVM_OPTS,
            *shlex.split(os.environ.get(JVM_OPTS_ENV, "")),
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(self.properties_file),
        ]
        began = time.monotonic()
        with self.log_file.open("ab") as out:
            out.write(f"\n==== starting broker {time.strftime('%Y-%m-%dT%H:%M:%S')} ====\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=detach,
            )
        self._pid = None
        self._write_pid_file()
        try:
            self._wait_ready(began + timeout, log_start)
        except BaseException:
            self._kill_now()
            raise
        log.info(
            "Kafka broker up at %s in %.1fs (pid %s)", self.bootstrap, time.monotonic() - began, self.pid
        )

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the broker (a clean shutdown that flushes its logs), then SIGKILL after ``timeout``."""
        pid = self.pid
        if pid is None:
            return
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("Kafka broker pid %s ignored SIGTERM for %.0fs; killing it", pid, timeout)
                    self._proc.kill()
                    self._proc.wait(10)
        else:
            _terminate(pid, timeout)
        self._proc = None
        self._pid = None
        self._remove_pid_file(pid)

    def _kill_now(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
        pid = self.pid
        self._proc = None
        self._pid = None
        if pid is not None:
            self._remove_pid_file(pid)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------------
    def _write_properties(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "4",
            "log.segment.bytes": str(16 * 1024 * 1024),
            "log.retention.hours": "168",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.cleaner.threads": "1",
        }
        text = "# written by bank/infra/kafka.py; rewritten on every start\n"
        text += "".join(f"{key}={value}\n" for key, value in props.items())
        self.properties_file.write_text(text)

    def _format(self, classpath: str) -> None:
        cmd = [
            java_binary(),
            "-Xmx256m",
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            _new_cluster_id(),
            "-c",
            str(self.properties_file),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, cwd=self.data_dir, timeout=120, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"formatting Kafka storage in {self.log_dirs} failed (exit {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-4000:]}"
            )

    def _wait_ready(self, deadline: float, log_start: int) -> None:
        assert self.port is not None
        last_error = "port not open yet"
        while True:
            if not self.is_running():
                code = self._proc.returncode if self._proc is not None else None
                raise RuntimeError(
                    f"Kafka broker exited with code {code} during startup; tail of {self.log_file}:\n"
                    f"{log_tail(self.log_file, start=log_start)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"Kafka broker at {self.bootstrap} not ready in time ({last_error}); "
                    f"tail of {self.log_file}:\n{log_tail(self.log_file, start=log_start)}"
                )
            if port_open(self.port):
                error = _probe(self.bootstrap, min(10.0, max(remaining, 1.0)))
                if error is None:
                    return
                last_error = error
            time.sleep(0.2)

    def _write_pid_file(self) -> None:
        info = {
            "pid": self.pid,
            "port": self.port,
            "controller_port": self.controller_port,
            "started_at": time.time(),
        }
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info) + "\n")
        tmp.replace(self.pid_file)

    def _remove_pid_file(self, pid: int) -> None:
        info = _read_pid_file(self.pid_file)
        if info is not None and info.get("pid") == pid:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()


def _probe(bootstrap: str, timeout: float) -> str | None:
    """None when a kafka-python admin client can see this broker registered and unfenced, else why not."""
    try:
        admin = _admin(bootstrap, timeout_ms=int(timeout * 1000))
    except Exception as exc:
        return f"admin client: {exc!r}"
    try:
        cluster = admin.describe_cluster()
        brokers = [b for b in cluster.get("brokers", []) if not b.get("is_fenced", False)]
        if not brokers:
            return "no unfenced broker in cluster metadata yet"
        admin.list_topics()
        return None
    except Exception as exc:
        return f"metadata: {exc!r}"
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def _read_pid_file(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` is a live ``kafka.Kafka`` JVM using this data dir's server.properties."""
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        return (
            proc.status() != psutil.STATUS_ZOMBIE
            and "kafka.Kafka" in cmdline
            and any(arg == str(data_dir / PROPERTIES_FILE_NAME) for arg in cmdline)
        )
    except psutil.Error:
        return False


def _terminate(pid: int, timeout: float) -> None:
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        log.warning("Kafka broker pid %s ignored SIGTERM for %.0fs; killing it", pid, timeout)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            proc.wait(10)


def up(data_dir: Path, port: int = 9092, timeout: float = 60) -> KafkaBroker:
    """Start a detached broker that survives the calling process, or attach to the one already running.

    The pid (and ports) go to ``<data_dir>/broker.pid``, which :func:`down` reads.
    """
    data_dir = Path(data_dir).resolve()
    info = _read_pid_file(data_dir / PID_FILE_NAME)
    if info is not None and _is_our_broker(info["pid"], data_dir):
        broker = KafkaBroker(data_dir, port=info.get("port"), controller_port=info.get("controller_port"))
        broker._pid = info["pid"]
        if info.get("port") != port:
            log.warning(
                "Kafka broker in %s already runs on port %s, not %s", data_dir, info.get("port"), port
            )
        return broker
    broker = KafkaBroker(data_dir, port=port)
    broker.start(timeout, detach=True)
    return broker


def down(data_dir: Path, timeout: float = 30) -> bool:
    """Stop the broker recorded in ``<data_dir>/broker.pid``; True if one was running and was stopped."""
    data_dir = Path(data_dir).resolve()
    pid_file = data_dir / PID_FILE_NAME
    info = _read_pid_file(pid_file)
    if info is None:
        return False
    pid = info["pid"]
    running = _is_our_broker(pid, data_dir)
    if running:
        _terminate(pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    return running


def create_topic(bootstrap: str, name: str, partitions: int = 3, replication_factor: int = 1) -> None:
    """Create a topic (an existing one is left as it is) and wait until every partition has a leader."""
    from kafka.errors import TopicAlreadyExistsError, for_code

    admin = _admin(bootstrap, timeout_ms=30_000)
    try:
        result = admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": replication_factor}},
            raise_errors=False,
        )
        for topic in result.get("topics", []):
            error = for_code(topic.get("error_code", 0))
            if topic.get("error_code", 0) != 0 and error is not TopicAlreadyExistsError:
                raise error(f"creating topic {topic.get('name')!r}: {topic.get('error_message')}")
        admin.wait_for_topics([name], timeout_ms=30_000)
    finally:
        admin.close()


__all__ = [
    "LIB_DIR",
    "POM_PATH",
    "REPO_ROOT",
    "KafkaBroker",
    "create_topic",
    "down",
    "ensure_jars",
    "up",
]
