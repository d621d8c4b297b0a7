"""What the deploy tests read: the compose file, the env file, the rendered Kubernetes manifests, and the
settings classes of the code they must match."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}


@dataclass(frozen=True)
class SettingsClass:
    cls: type[BaseSettings]
    prefix: str
    names: frozenset[str]  # every environment variable the class reads


def settings_classes() -> list[SettingsClass]:
    """BankSettings and every settings class in services/*/config.py (found by their env_prefix)."""
    configs = sorted(f"services.{p.parent.name}.config" for p in (REPO / "services").glob("*/config.py"))
    modules = ["shared.config", *configs]
    found: list[SettingsClass] = []
    for name in modules:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, BaseSettings) and obj.__module__ == name):
                continue
            prefix = str(obj.model_config.get("env_prefix", ""))
            names = set()
            for field_name, info in obj.model_fields.items():
                names.add(f"{prefix}{field_name}".upper())
                if isinstance(info.validation_alias, AliasChoices):
                    names.update(str(c).upper() for c in info.validation_alias.choices)
                elif isinstance(info.validation_alias, str):
                    names.add(info.validation_alias.upper())
            found.append(SettingsClass(obj, prefix, frozenset(names)))
    return found


def known_setting(name: str, classes: list[SettingsClass]) -> bool:
    return any(name in c.names for c in classes)


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            out[key] = value
    return out


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path is not None, "kubectl (package `kubectl`) is needed to render the kustomizations"
    return path


def render(overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS[overlay])], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def classes() -> list[SettingsClass]:
    return settings_classes()


def code_topics() -> set[str]:
    """Topic names the services publish or consume: those of shared/topics.py (where each is named once)
    that services/*/ refer to as `topics.NAME`, and any `*TOPIC = "a.b"` string constant left there."""
    from shared import topics

    literal = re.compile(r'^\w*TOPIC\w*\s*(?::\s*\w+\s*)?=\s*"([a-z]+\.[a-z_.]+)"', re.M)
    named = re.compile(r"\btopics\.([A-Z][A-Z_]*)\b")
    found: set[str] = set()
    for path in (REPO / "services").rglob("*.py"):
        text = path.read_text()
        found.update(literal.findall(text))
        for name in named.findall(text):
            value = getattr(topics, name, None)
            if isinstance(value, str):
                found.add(value)
    return found
