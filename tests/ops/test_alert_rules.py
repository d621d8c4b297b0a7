"""The alert rules and the provisioned Grafana dashboards name only metrics the code exports, and every
money-at-risk check has an alert and a panel. With Debian's `prometheus` package installed, promtool
checks the rules and runs their unit tests (deploy/prometheus/rules.test.yml) as well."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from services.gateway.ops.invariants import CHECK_NAMES

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
CODE = [ROOT / "shared", ROOT / "services", ROOT / "bank"]

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan",
}  # fmt: skip
# The alerts on the money-at-risk panel's checks (decision 0038).
RISK_ALERTS = {
    "stray_holds": "StrandedHolds",
    "overdue_holds": "OverdueHolds",
    "feed_misses": "FeedMissing",
    "dead_letters": "DeadLettersUnresolved",
    "ledger_sums": "LedgerDoesNotSumToZero",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords, labels or Grafana variables)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges ([5m], [$__range])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def code_text() -> str:
    return "\n".join(p.read_text() for folder in CODE for p in folder.rglob("*.py"))


def defined(name: str, code: str) -> bool:
    """`name` is a metric some code defines (as a quoted name; histograms add _bucket, _sum, _count)."""
    candidates = {name, re.sub(r"_(bucket|sum|count)$", "", name)}
    return any(f'"{c}"' in code for c in candidates)


def rules() -> list[dict[str, object]]:
    doc = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_rules_are_well_formed_and_name_metrics_the_code_exports() -> None:
    code = code_text()
    found = rules()
    assert found, "no rules"
    names = [str(r["alert"]) for r in found]
    assert len(names) == len(set(names)), "two alerts share a name"
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("page", "ticket"), rule  # type: ignore[index]
        assert rule["annotations"]["summary"], rule  # type: ignore[index]
        for name in metric_names(str(rule["expr"])):
            assert defined(name, code), f"alert {rule['alert']}: no code exports {name}"


def test_every_money_at_risk_check_has_an_alert_and_a_grafana_panel() -> None:
    assert set(RISK_ALERTS) == set(CHECK_NAMES)
    by_name = {str(r["alert"]): str(r["expr"]) for r in rules()}
    assert "InvariantsNotChecked" in by_name
    panels = [
        (p["title"], t["expr"])
        for board in DASHBOARDS
        for p in json.loads(board.read_text())["panels"]
        for t in p.get("targets", [])
    ]
    for check, alert in RISK_ALERTS.items():
        assert alert in by_name, alert
        if check == "dead_letters":
            metric = "bank_dead_letters_unresolved"
        elif check == "ledger_sums":
            metric = "bank_ledger_sum_minor"
        else:
            metric = f'bank_invariant_violations{{check="{check}"}}'
        assert metric in by_name[alert], (alert, by_name[alert])
        assert any(metric in expr for _, expr in panels), f"no Grafana panel shows {metric}"


def test_the_dashboards_name_metrics_the_code_exports() -> None:
    code = code_text()
    for board in DASHBOARDS:
        for panel in json.loads(board.read_text())["panels"]:
            for target in panel.get("targets", []):
                for name in metric_names(target["expr"]):
                    assert defined(name, code), f"{board.name}: panel {panel['title']!r} names {name}"


def test_metric_names_are_read_from_promql() -> None:
    expr = 'absent(a_b) or (time() - max by (x) (c_total{k="v"}[5m])) > 60 and d_bucket offset 5m'
    assert metric_names(expr) == {"a_b", "c_total", "d_bucket"}


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"]):
        done = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
