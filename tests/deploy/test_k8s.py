"""deploy/k8s: rendered with kustomize (kubectl's built-in), validated against the Kubernetes schemas, and
checked against the code (services, ports, settings names, topics, who calls accounts).

Schema validation uses kubernetes-validate (PyPI), which bundles the OpenAPI schemas of each Kubernetes
release, so it needs no cluster and no download at test time; strict mode rejects unknown fields. The
operators' custom resources have no schema there: they are listed in CRD_KINDS, skipped by the schema
check on purpose, and checked below for the fields the bank relies on.
"""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from services.cards.config import CardsSettings
from services.transactions.config import TransactionsSettings
from shared.config import SERVICES
from tests.deploy.conftest import REPO, SettingsClass, code_topics, known_setting, read_env_file

KUBERNETES_VERSION = "1.32.0"  # the oldest minor still supported upstream when this was written
CRD_KINDS = {
    ("kafka.strimzi.io/v1beta2", "Kafka"),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}
Docs = list[dict[str, Any]]
LINK_SERVICE = "cards-iso8583"


def of_kind(docs: Docs, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config(docs: Docs) -> dict[str, str]:
    return dict(of_kind(docs, "ConfigMap")["bank-config"]["data"])


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_manifests_match_the_kubernetes_schemas(rendered: dict[str, Docs], overlay: str) -> None:
    checked, skipped = [], []
    for doc in rendered[overlay]:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            skipped.append(what)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {what} at {'/'.join(map(str, exc.path))}: {exc.message}")
        checked.append(what)
    assert len(checked) > 40 and skipped, (checked, skipped)
    print(f"\n{overlay}: {len(checked)} resources schema-valid; CRDs not schema-checked: {sorted(skipped)}")


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_every_service_has_its_resources(rendered: dict[str, Docs], overlay: str) -> None:
    docs = rendered[overlay]
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    services.pop(LINK_SERVICE)  # cards' second Service: the card network's way in (below)
    hpas, pdbs = of_kind(docs, "HorizontalPodAutoscaler"), of_kind(docs, "PodDisruptionBudget")
    assert set(deployments) == set(services) == set(hpas) == set(pdbs) == set(SERVICES)
    settings = config(docs)
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == [name], "the image's ENTRYPOINT is `bank serve`"
        port = container["ports"][0]["containerPort"]
        url = urlsplit(settings[f"BANK_{name.upper()}_URL"])
        assert (url.hostname, url.port) == (name, port), "the URL other services use is this Service:port"
        assert services[name]["spec"]["ports"][0]["port"] == port
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        refs = {next(iter(ref)): next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"configMapRef": "bank-config", "secretRef": "bank-secrets"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert hpas[name]["spec"]["scaleTargetRef"]["name"] == name
        assert hpas[name]["spec"]["minReplicas"] >= 2 and pdbs[name]["spec"]["minAvailable"] >= 1
    (job,) = of_kind(docs, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["bank", "migrate"]


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_the_card_network_reaches_cards_iso8583_link(
    rendered: dict[str, Docs], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: cards listens for the network's ISO 8583 links on CARDS_ISO8583_PORT; the pod declares the
    port, the cards Service carries it, a LoadBalancer Service that keeps the source address (cards checks
    it against CARDS_ISO8583_ALLOW_NETWORKS) lets the network in, and the allow list parses as cards reads
    it."""
    docs = rendered[overlay]
    settings = config(docs)
    for name, value in settings.items():
        if name.startswith("CARDS_"):
            monkeypatch.setenv(name, value)
    cards_settings = CardsSettings()
    port = cards_settings.iso8583_port
    assert port == 8583
    (container,) = of_kind(docs, "Deployment")["cards"]["spec"]["template"]["spec"]["containers"]
    declared = {p["name"]: p for p in container["ports"]}
    assert declared["iso8583"] == {"name": "iso8583", "containerPort": port, "protocol": "TCP"}
    services = of_kind(docs, "Service")
    internal = {p["name"]: p for p in services["cards"]["spec"]["ports"]}
    assert (internal["iso8583"]["port"], internal["iso8583"]["targetPort"]) == (port, "iso8583")
    link = services[LINK_SERVICE]["spec"]
    assert link["type"] == "LoadBalancer" and link["externalTrafficPolicy"] == "Local"
    assert link["selector"] == {"app.kubernetes.io/name": "cards"}
    assert [(p["port"], p["targetPort"], p["protocol"]) for p in link["ports"]] == [(port, "iso8583", "TCP")]
    assert all(
        s["spec"].get("type", "ClusterIP") == "ClusterIP" for n, s in services.items() if n != LINK_SERVICE
    )
    networks = cards_settings.iso8583_allow_networks
    assert networks and all(net.is_private for net in networks), "the link's allow list is a private range"
    assert any(ip_address("10.1.2.3") in net for net in networks)


def test_production_keeps_attachments_in_s3(
    rendered: dict[str, Docs], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 0046: the production overlay picks the S3 store (the base keeps the embedded one), its
    settings are complete once bank-secrets holds the key pair, and transactions may reach S3 on 443."""
    assert "TRANSACTIONS_STORAGE" not in config(rendered["base"])
    settings = config(rendered["production"])
    secrets = read_env_file(REPO / "deploy" / "k8s" / "secrets.example.env")
    for name, value in {**settings, **secrets}.items():
        if name.startswith("TRANSACTIONS_"):
            monkeypatch.setenv(name, value or "placeholder")
    store = TransactionsSettings()
    assert store.storage == "s3" and store.storage_s3_endpoint and store.storage_s3_bucket
    assert store.storage_s3_region in store.storage_s3_endpoint
    egress = of_kind(rendered["production"], "NetworkPolicy")["transactions-egress"]["spec"]["egress"]
    public = [r for r in egress if any("ipBlock" in peer for peer in r["to"])]
    assert [p["port"] for r in public for p in r["ports"]] == [443]
    assert all("10.0.0.0/8" in peer["ipBlock"]["except"] for r in public for peer in r["to"])


def test_settings_names_match_the_code(rendered: dict[str, Docs], classes: list[SettingsClass]) -> None:
    names: set[str] = set(read_env_file(REPO / "deploy" / "k8s" / "secrets.example.env"))
    for docs in rendered.values():
        names |= set(config(docs))
        for workload in [*of_kind(docs, "Deployment").values(), *of_kind(docs, "Job").values()]:
            for container in workload["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in container.get("env", [])}
    unknown = sorted(n for n in names if not known_setting(n, classes))
    assert unknown == [], f"k8s sets variables no settings class reads: {unknown}"


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_kafka_and_postgres_resources_fit_the_code(rendered: dict[str, Docs], overlay: str) -> None:
    docs = rendered[overlay]
    (kafka,) = of_kind(docs, "Kafka").values()
    name = kafka["metadata"]["name"]
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert config(docs)["BANK_KAFKA_BOOTSTRAP"] == f"{name}-kafka-bootstrap:9092"
    assert any(lis["port"] == 9092 and not lis["tls"] for lis in kafka["spec"]["kafka"]["listeners"])
    (pool,) = of_kind(docs, "KafkaNodePool").values()
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == name
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    topics = of_kind(docs, "KafkaTopic").values()
    assert {t["spec"]["topicName"] for t in topics} == code_topics()
    for topic in topics:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == name
        assert isinstance(topic["spec"]["partitions"], int) and topic["spec"]["partitions"] >= 6
        assert topic["spec"]["replicas"] <= pool["spec"]["replicas"]
        min_isr = int(topic["spec"]["config"]["min.insync.replicas"])
        assert min_isr <= topic["spec"]["replicas"]
    (db,) = of_kind(docs, "Cluster").values()
    assert db["spec"]["bootstrap"]["initdb"]["database"] == "bank"
    for workload in [*of_kind(docs, "Deployment").values(), *of_kind(docs, "Job").values()]:
        (env,) = workload["spec"]["template"]["spec"]["containers"][0]["env"]
        ref = env["valueFrom"]["secretKeyRef"]
        assert (env["name"], ref["name"], ref["key"]) == (
            "BANK_DATABASE_URL",
            f"{db['metadata']['name']}-app",
            "uri",
        )
    if overlay == "production":
        assert pool["spec"]["replicas"] == 3 and db["spec"]["instances"] == 3
        assert all(t["spec"]["partitions"] == 12 and t["spec"]["replicas"] == 3 for t in topics)
        hpas = of_kind(docs, "HorizontalPodAutoscaler")
        assert all(hpas[s]["spec"]["minReplicas"] >= 3 for s in ("gateway", "cards", "accounts"))
        assert ":latest" not in str(of_kind(docs, "Deployment"))


def callers_of_accounts() -> set[str]:
    """Services whose code calls accounts (its URL, or shared.remote_auth's JWKS and revocation list)."""
    pattern = re.compile(r'url_of\("accounts"\)|remote_auth')
    return {
        s for s in SERVICES if s != "accounts"
        and any(pattern.search(p.read_text()) for p in (REPO / "services" / s).rglob("*.py"))
    }  # fmt: skip


def test_network_policies_let_through_only_the_calls_the_bank_makes(rendered: dict[str, Docs]) -> None:
    policies = of_kind(rendered["base"], "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "bank"}
    assert (
        set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny and "egress" not in deny
    )

    def peers(rules: list[dict[str, Any]]) -> set[str | None]:
        out: set[str | None] = set()
        for rule in rules:
            if "from" not in rule and "to" not in rule:
                out.add(None)  # anyone
            for peer in rule.get("from", rule.get("to", [])):
                if "namespaceSelector" in peer and "podSelector" not in peer:
                    namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    out.add(f"namespace {namespace}")
                else:
                    out.add(peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name"))
        return out

    link_rules = [
        rule for rule in policies["cards-ingress"]["spec"]["ingress"]
        if rule.get("ports") == [{"protocol": "TCP", "port": 8583}]
    ]  # fmt: skip
    assert peers(link_rules) == {None}, (
        "the card network's ISO 8583 links reach cards from their own addresses"
    )
    ingress = {
        s: peers([r for r in policies[f"{s}-ingress"]["spec"]["ingress"] if r not in link_rules])
        for s in SERVICES
    }
    assert None in ingress["gateway"], "the gateway takes traffic from anywhere"
    for service in SERVICES:
        if service != "gateway":
            assert None not in ingress[service], f"{service} must not be reachable from outside"
    scraper = "namespace monitoring"  # Prometheus, on /metrics
    assert ingress["accounts"] == callers_of_accounts() | {scraper}
    for service in ("cards", "transactions", "webhooks", "notifications"):
        assert ingress[service] == {"gateway", scraper}
    assert peers(policies["cards-egress"]["spec"]["egress"]) == {"accounts"}, "cards may call only accounts"
    assert peers(policies["gateway-egress"]["spec"]["egress"]) == set(SERVICES) - {"gateway"}
