"""The results of a run: report.json, summary.md and latency.png in a results folder.

The default folder is bench/results/sim-<UTC timestamp>/ (bench/results is git-ignored).
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulator.loadgen import Stats
from simulator.scenarios import AUTHORISATION, KINDS

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def results_dir(base: Path | None = None, name: str = "sim") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = (base or RESULTS) / f"{name}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gb"] = round(int(mem[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def build(
    stats: Stats, *, run: dict[str, Any], differences: list[str], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON report of one run."""
    seconds = sorted(stats.windows)
    timeline = []
    for s in seconds:
        w = stats.windows[s]
        h = w.auth
        point: dict[str, Any] = {"second": s, "offered": w.offered, "answered": w.answered}
        if h.get_total_count():
            point.update(
                p50_ms=h.get_value_at_percentile(50) / 1000,
                p99_ms=h.get_value_at_percentile(99) / 1000,
                max_ms=h.get_max_value() / 1000,
            )
        timeline.append(point)
    elapsed = stats.elapsed or 1.0
    auths = stats.latency.get(AUTHORISATION)
    auth_count = auths.get_total_count() if auths is not None else 0
    return {
        "run": run,
        "machine": machine(),
        "started": datetime.fromtimestamp(stats.started, UTC).isoformat(),
        "elapsed_s": round(stats.elapsed, 3),
        "messages": {
            "offered": stats.offered,
            "answered": stats.answered,
            "resent": stats.resent,
            "skipped_dependents": stats.skipped,
        },
        "rates": {
            "offered_per_s": round(stats.offered / elapsed, 1),
            "answered_per_s": round(stats.answered / elapsed, 1),
            "authorisations_per_s": round(auth_count / elapsed, 1),
        },
        "latency": {kind: stats.percentiles(kind) for kind in KINDS if kind in stats.latency},
        "codes": {kind: dict(c) for kind, c in stats.codes.items()},
        "errors": dict(stats.errors),
        "generator_lag_ms": {
            "p50": stats.lag.get_value_at_percentile(50) / 1000,
            "p99": stats.lag.get_value_at_percentile(99) / 1000,
            "max": stats.lag.get_max_value() / 1000,
        },
        "reconciliation": {"clean": not differences, "differences": differences},
        "timeline": timeline,
        **(extra or {}),
    }


def markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    lines = [
        f"# Simulator run: {run.get('scenario')}",
        "",
        f"{report['started']} · {report['machine'].get('cpu', '?')}, {report['machine']['cpus']} CPUs · "
        f"load before {report['machine']['load_average']}",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in run.items()),
        "",
        f"Offered {report['rates']['offered_per_s']}/s, answered {report['rates']['answered_per_s']}/s "
        f"({report['messages']['offered']} messages in {report['elapsed_s']} s; "
        f"{report['messages']['resent']} resent, {report['messages']['skipped_dependents']} dependents "
        "of declined authorisations not sent).",
        "",
        "| kind | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, p in report["latency"].items():
        if p.get("count"):
            lines.append(
                f"| {kind} | {p['count']} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} | {p['p99_ms']:.1f} | "
                f"{p['p99_9_ms']:.1f} | {p['max_ms']:.1f} |"
            )
    lines += ["", "| kind | answers by code |", "|---|---|"]
    for kind, codes in report["codes"].items():
        lines.append(f"| {kind} | {', '.join(f'{c}: {n}' for c, n in sorted(codes.items()))} |")
    lines += ["", f"Errors: {report['errors'] or 'none'}.", ""]
    for key in ("chaos", "clearing_outcomes", "app_moves"):
        if key in report:
            lines += [f"{key.replace('_', ' ').capitalize()}: `{json.dumps(report[key])}`", ""]
    rec = report["reconciliation"]
    if rec["clean"]:
        checked = "; ledger verified" if run.get("ledger_checked") else ""
        lines.append(f"Reconciliation: **clean** (every balance matches the network's books{checked}).")
    else:
        lines.append(f"Reconciliation: **{len(rec['differences'])} differences**")
        lines += [f"- {d}" for d in rec["differences"][:50]]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["timeline"]
    xs = [p["second"] for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=(2, 1))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        top.plot([p["second"] for p in points if key in p], [p[key] for p in points if key in p], label=label)
    top.set_ylabel("authorisation latency (ms)")
    top.set_yscale("log")
    top.legend(loc="upper left")
    top.grid(True, which="both", alpha=0.3)
    top.set_title(f"{report['run'].get('scenario')}: latency from scheduled time, per second")
    bottom.plot(xs, [p["offered"] for p in points], label="offered/s")
    bottom.plot(xs, [p["answered"] for p in points], label="answered/s")
    bottom.set_xlabel("seconds (by scheduled time)")
    bottom.set_ylabel("messages/s")
    bottom.legend(loc="upper left")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(report: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "summary.md").write_text(markdown(report))
    chart(report, folder / "latency.png")
    return folder
