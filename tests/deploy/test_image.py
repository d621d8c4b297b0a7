"""The image: its dependency list, what it copies, and its health check."""

from __future__ import annotations

import subprocess
import sys

from deploy.healthcheck import DEFAULT_PORTS, port_of, served_service
from deploy.runtime_requirements import LOCAL_ONLY, LOCAL_ONLY_MODULES, requirement_name, runtime_requirements
from shared.config import SERVICES
from tests.deploy.conftest import REPO

# Imports every module a container runs, with the distributions the image leaves out made unimportable.
GUARD = """
import importlib, importlib.abc, pkgutil, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the image")
sys.meta_path.insert(0, Block())
import bank.cli, bank.migrate, shared.runtime
for svc in sys.argv[2].split(","):
    package = importlib.import_module(f"services.{svc}")
    for info in pkgutil.walk_packages(package.__path__, f"services.{svc}."):
        if not info.name.endswith(".__main__"):  # __main__ starts the service
            importlib.import_module(info.name)
print("ok")
"""


def test_the_image_leaves_out_only_local_tools() -> None:
    kept = {requirement_name(r) for r in runtime_requirements(REPO / "pyproject.toml")}
    assert not kept & set(LOCAL_ONLY)
    assert {"fastapi", "uvicorn", "asyncpg", "kafka-python", "alembic"} <= kept


def test_every_service_module_imports_without_the_local_only_distributions() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", GUARD, ",".join(LOCAL_ONLY_MODULES), ",".join(SERVICES)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    lines = dockerfile.splitlines()
    copied = [line.split()[1] for line in lines if line.startswith("COPY ") and "--from" not in line]
    assert copied, "the Dockerfile copies nothing?"
    for source in copied:
        assert (REPO / source).exists(), source
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f".dockerignore leaves out {source}"
    for required in ("USER 10001", "HEALTHCHECK", 'ENTRYPOINT ["bank", "serve"]', "ca-certificates"):
        assert required in dockerfile


def test_the_health_check_finds_the_service_and_its_port() -> None:
    assert served_service(["/opt/bank/bin/python", "/opt/bank/bin/bank", "serve", "cards"]) == "cards"
    assert served_service(["/opt/bank/bin/python", "/opt/bank/bin/bank", "migrate"]) is None
    assert port_of("cards", {"BANK_CARDS_URL": "http://cards:9002"}) == 9002
    assert port_of("webhooks", {}) == DEFAULT_PORTS["webhooks"] == 8004
    from shared.config import BankSettings

    defaults = BankSettings()
    assert {s: defaults.port_of(s) for s in SERVICES} == DEFAULT_PORTS
