"""docker-compose.yml and deploy/bank.env: valid for Compose, and every name in them matches the code."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.cards.config import CardsSettings
from shared.config import SERVICES
from tests.deploy.conftest import REPO, SettingsClass, known_setting, read_env_file

BANK_IMAGE = "mondo-bank:latest"
MONITORING = {"prometheus", "grafana", "jaeger"}


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    # Never a skip: CI installs Debian's docker-compose (v1), which validates without a Docker engine.
    assert exe is not None, "docker-compose is not installed (apt-get install -y docker-compose)"
    return subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), *args], capture_output=True, text=True, timeout=120
    )


def bank_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == BANK_IMAGE}


def test_compose_file_is_valid() -> None:
    plain = docker_compose("config", "-q")
    assert plain.returncode == 0, plain.stderr
    monitored = docker_compose("--profile", "monitoring", "config", "--services")
    assert monitored.returncode == 0, monitored.stderr
    assert MONITORING <= set(monitored.stdout.split())


def test_monitoring_stays_behind_its_profile(compose: dict[str, Any]) -> None:
    # (docker-compose v1 lists profiled services in `config --services` too: read the file instead.)
    profiled = {n for n, s in compose["services"].items() if s.get("profiles")}
    assert profiled == MONITORING
    assert all(compose["services"][n]["profiles"] == ["monitoring"] for n in MONITORING)


def test_every_service_runs_from_the_one_image(compose: dict[str, Any]) -> None:
    bank = bank_services(compose)
    served = {s["command"][0] for s in bank.values() if s.get("command") and "entrypoint" not in s}
    assert served == set(SERVICES)
    for name in SERVICES:
        assert bank[name]["command"] == [name], "the compose service is named after the bank service"
    assert bank["migrate"]["entrypoint"] == ["bank", "migrate"]
    assert bank["push-fake"]["entrypoint"][:3] == ["python", "-m", "services.notifications.providers.fake"]
    for name, service in bank.items():
        assert service.get("env_file") == ["deploy/bank.env"], f"{name}: settings come from one env file"


def test_only_the_gateway_and_the_card_network_link_are_published(compose: dict[str, Any]) -> None:
    published = {
        name
        for name, service in compose["services"].items()
        if service.get("ports") and "monitoring" not in service.get("profiles", [])
    }
    assert published == {"gateway", "cards"}
    for name in MONITORING:  # the monitoring UIs, when asked for, only on the host's loopback
        assert all(p.startswith("127.0.0.1:") for p in compose["services"][name].get("ports", []))


def test_cards_publishes_its_iso8583_link_and_nothing_else(compose: dict[str, Any]) -> None:
    """The card network's persistent TCP links (issue 20, docs/iso8583.md) reach cards on
    CARDS_ISO8583_PORT; cards' HTTP port stays on the compose network, behind the gateway."""
    env = read_env_file(REPO / "deploy" / "bank.env")
    port = int(env.get("CARDS_ISO8583_PORT", CardsSettings.model_fields["iso8583_port"].default))
    assert port == 8583
    assert compose["services"]["cards"]["ports"] == [f"{port}:{port}"]
    http_port = urlsplit(env["BANK_CARDS_URL"]).port
    assert all(str(http_port) not in p for p in compose["services"]["cards"]["ports"])
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert str(port) in dockerfile.split("\nEXPOSE", 1)[1].splitlines()[0].split()


def test_the_compose_link_admits_connections_through_dockers_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    """A link from the host to the published port arrives from Docker's bridge (172.17.0.1 by default),
    not loopback: the allow list bank.env gives cards must take it, as cards itself parses it."""
    env = read_env_file(REPO / "deploy" / "bank.env")
    for name, value in env.items():
        if name.startswith("CARDS_"):
            monkeypatch.setenv(name, value)
    settings = CardsSettings()
    assert settings.iso8583_port == 8583
    for address in ("172.17.0.1", "127.0.0.1", "192.168.65.1"):
        assert any(ip_address(address) in net for net in settings.iso8583_allow_networks), address
    assert not any(ip_address("8.8.8.8") in net for net in settings.iso8583_allow_networks)


def test_env_file_names_match_the_settings_classes(classes: list[SettingsClass]) -> None:
    env = read_env_file(REPO / "deploy" / "bank.env")
    unknown = sorted(name for name in env if not known_setting(name, classes))
    assert unknown == [], f"deploy/bank.env sets variables no settings class reads: {unknown}"


def test_compose_environment_names_match_the_settings_classes(
    compose: dict[str, Any], classes: list[SettingsClass]
) -> None:
    for name, service in bank_services(compose).items():
        environment = service.get("environment") or {}
        keys = environment if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        unknown = sorted(k for k in keys if not known_setting(k, classes))
        assert unknown == [], f"{name}: unknown settings {unknown}"


def test_service_urls_name_the_compose_services_and_their_ports(compose: dict[str, Any]) -> None:
    env = read_env_file(REPO / "deploy" / "bank.env")
    routes = tomllib.loads((REPO / "services" / "gateway" / "routes.toml").read_text())
    upstreams = {r["upstream"] for r in routes["route"]}
    assert upstreams <= set(SERVICES), f"routes.toml names unknown upstreams: {upstreams - set(SERVICES)}"
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    for service in SERVICES:
        url = urlsplit(env[f"BANK_{service.upper()}_URL"])
        assert url.hostname == service and url.hostname in compose["services"]
        exposed = dockerfile.split("\nEXPOSE", 1)[1].splitlines()[0].split()
        assert str(url.port) in exposed, f"{service}: port {url.port} not exposed by the image"
    gateway_port = urlsplit(env["BANK_GATEWAY_URL"]).port
    assert compose["services"]["gateway"]["ports"] == [f"{gateway_port}:{gateway_port}"]
    kafka = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka.endswith(env["BANK_KAFKA_BOOTSTRAP"]), "services must reach Kafka where it advertises itself"
    push = urlsplit(env["NOTIFICATIONS_APNS_URL"])
    assert push.hostname == "push-fake" and str(push.port) in compose["services"]["push-fake"]["entrypoint"]


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    env = read_env_file(REPO / "deploy" / "bank.env")
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {urlsplit(env[f"BANK_{s.upper()}_URL"]).netloc for s in SERVICES}
