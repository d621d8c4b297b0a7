"""The Java programs the bank runs locally (the Kafka broker, S3Proxy): their jars from Maven Central,
through the machine's Maven, into an ignored cache; the `java` to run them; their logs' tails.

A program's ``deploy/<name>/pom.xml`` copies what it needs into ``deploy/<name>/target/lib``.
:func:`fetch_jars` runs Maven (batch mode, ``~/.m2`` as the cache) only when that is missing or was made
from another ``pom.xml`` (a stamp beside it holds the pom's digest), under a file lock, so
concurrent processes fetch once.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
"""The repository root: the parent of the ``bank`` package directory."""


def fetch_jars(deploy_dir: Path, what: str, present: Callable[[Path], bool], *, quiet: bool = True) -> Path:
    """Make sure ``deploy_dir/target/lib`` holds `what` (`present(lib)` says whether it does) as
    ``deploy_dir/pom.xml`` now describes it; return that directory."""
    pom, lib = deploy_dir / "pom.xml", deploy_dir / "target" / "lib"
    stamp, lock_path = deploy_dir / "target" / "lib.stamp", deploy_dir / "target" / "lib.lock"

    def ready() -> bool:
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        return lib.is_dir() and present(lib) and stamp.is_file() and stamp.read_text().strip() == digest

    if ready():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(f"Maven ('mvn') is not on PATH; it is needed to fetch {what}")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():  # another process did it while we waited
            return lib
        if lib.exists():
            shutil.rmtree(lib)  # stale (another pom.xml) or half-copied
        cmd = [mvn, "-B", "-f", str(pom), "package"]
        if quiet:
            cmd.insert(2, "-q")
        log.info("fetching %s: %s", what, " ".join(cmd))
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=quiet, text=True, check=False)
        if proc.returncode != 0:
            output = ((proc.stdout or "") + (proc.stderr or ""))[-4000:]
            raise RuntimeError(f"'{' '.join(cmd)}' failed with exit code {proc.returncode}:\n{output}")
        if not present(lib):
            raise RuntimeError(f"Maven succeeded but {what} is not in {lib}")
        stamp.write_text(hashlib.sha256(pom.read_bytes()).hexdigest() + "\n")
    return lib


def java_binary() -> str:
    """The `java` of JAVA_HOME, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("'java' (17 or newer) is not on PATH and JAVA_HOME is not set")
    return java


def log_tail(path: Path, lines: int = 40, start: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    all_lines = text.splitlines()
    tail = all_lines[-lines:]
    # Java stack traces push the actual cause out of a short tail: quote the last causes first.
    causes = [ln for ln in all_lines[:-lines] if " ERROR " in ln or ln.startswith("Caused by:")][-5:]
    if causes:
        tail = [*causes, "...", *tail]
    return "\n".join(tail) or "<empty>"
