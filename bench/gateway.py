"""Benchmark of the gateway: one trivial upstream called directly, and through the gateway.

    .venv/bin/python -m bench.gateway [--seconds 10] [--warmup 2] [--concurrency 50] [--profile]
                                      [--upstream-transport lean|httpx]

Every piece is its own OS process, as in production: the upstream (uvicorn, an app from
shared.web.create_app answering `GET /bench/ping` with a small JSON body; it also serves a JWKS and an
empty revocation list, playing accounts), the gateway (uvicorn, `create_app` with a two-route
table: `/bench` without a token and `/bench-user` with one, both in a rate-limit class high enough
never to refuse, so the limiter still runs), and the load generator (asyncio on raw keep-alive
sockets, so the client is not what is measured).

Runs, each closed-loop for `--seconds` after `--warmup`:
* direct:        `--concurrency` connections to the upstream
* gateway:       the same through the gateway, no token
* gateway+token: the same with an access token (signature check, revocation lookup, identity headers)
* unloaded latency: one connection, direct and through the gateway (what the hop itself costs)
The gateway logs its one JSON line per request (at INFO, to /dev/null): that cost is counted.
CPU time per request of the upstream and of the gateway comes from the processes' own counters.
Figures go to stdout and to bench/results/gateway.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from bank.infra.ports import free_port
from shared.auth import SigningKey

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROUTES = """
[defaults]
timeout = 5.0
rate_limit = "bench"

[[route]]
prefix = "/bench"
methods = ["GET"]
upstream = "transactions"
auth = "none"

[[route]]
prefix = "/bench-user"
methods = ["GET"]
upstream = "transactions"
auth = "user"
"""


# -- the processes ------------------------------------------------------------------------------------


def serve_upstream(port: int, key_pem: str, kid: str) -> None:
    import uvicorn
    from fastapi import APIRouter

    from shared.web import create_app

    key = SigningKey.from_pem(kid, key_pem)
    api = APIRouter()

    @api.get("/bench/ping")
    @api.get("/bench-user/ping")
    async def ping() -> dict[str, Any]:
        return {"ok": True, "service": "bench-upstream"}

    @api.get("/oauth2/jwks.json")
    async def jwks() -> dict[str, Any]:
        return {"keys": [key.public_jwk()]}

    @api.get("/oauth2/revocations")
    async def revocations() -> dict[str, Any]:
        return {"revoked": [], "as_of": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    app = create_app("transactions", routers=[api])
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")


def serve_gateway(port: int, profile: str | None) -> None:
    import uvicorn

    from shared.observability import configure_logging

    configure_logging("gateway", "INFO", as_json=True)  # stderr is /dev/null: formatted, then dropped

    def run() -> None:
        uvicorn.run(
            "services.gateway.app:create_app",
            factory=True,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )

    if not profile:
        run()
        return
    profiler = cProfile.Profile()
    profiler.runcall(run)
    profiler.dump_stats(profile)


async def load(
    url: str, path: str, headers: dict[str, str], connections: int, warmup: float, seconds: float
) -> tuple[list[float], int, float]:
    """Closed loop on raw keep-alive sockets: each connection sends the next request as soon as the
    previous answer is read. Returns (latencies of the measured window, errors, measured seconds)."""
    host, port = url.removeprefix("http://").split(":")
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    started = time.perf_counter()
    measure_from, stop_at = started + warmup, started + warmup + seconds
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                at = lower.index(b"content-length:") + 15
                length = int(lower[at : lower.index(b"\r\n", at)])
                await reader.readexactly(length)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)
                    if head[9:12] != b"200":
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies, errors, min(time.perf_counter(), stop_at) - measure_from


def run_load(args: list[str]) -> None:
    url, path, headers_json, connections, warmup, seconds = args
    latencies, errors, elapsed = asyncio.run(
        load(url, path, json.loads(headers_json), int(connections), float(warmup), float(seconds))
    )
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    print(
        json.dumps(
            {
                "requests": len(latencies),
                "errors": errors,
                "seconds": round(elapsed, 3),
                "rps": round(len(latencies) / elapsed, 1),
                "p50_ms": pct(0.50),
                "p90_ms": pct(0.90),
                "p99_ms": pct(0.99),
                "max_ms": round(latencies[-1] * 1000, 3),
            }
        )
    )


# -- the orchestra ------------------------------------------------------------------------------------


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.gateway", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ok(url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not answering 200 after 30 s")


@contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure(
    name: str,
    url: str,
    path: str,
    headers: dict[str, str],
    connections: int,
    warmup: float,
    seconds: float,
    watch: dict[str, int],
) -> dict[str, Any]:
    procs = {label: psutil.Process(pid) for label, pid in watch.items()}
    before = {label: sum(p.cpu_times()[:2]) for label, p in procs.items()}
    out = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "_load", url, path, json.dumps(headers), str(connections),
         str(warmup), str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result: dict[str, Any] = {"name": name, "connections": connections, **json.loads(out)}
    total = result["rps"] * (warmup + seconds)  # CPU is counted over warm-up and measure alike
    for label, p in procs.items():
        used = sum(p.cpu_times()[:2]) - before[label]
        result[f"{label}_cpu_us_per_request"] = round(used / total * 1e6, 1) if total else None
    print(
        f"  {name:<26} {result['rps']:>9,.0f} req/s   p50 {result['p50_ms']:>7.2f} ms   "
        f"p99 {result['p99_ms']:>7.2f} ms   errors {result['errors']}"
        + "".join(f"   {label} {result[f'{label}_cpu_us_per_request']} µs CPU/req" for label in procs),
        flush=True,
    )
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the gateway; print its top functions"
    )
    parser.add_argument(
        "--upstream-transport",
        choices=("lean", "httpx"),
        default="lean",
        help="GATEWAY_UPSTREAM_TRANSPORT: the gateway's own HTTP/1.1 transport, or httpx's (httpcore)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_upstream"]:
        serve_upstream(int(argv[1]), os.environ["BENCH_KEY_PEM"], argv[2])
        return 0
    if argv[:1] == ["_gateway"]:
        serve_gateway(int(argv[1]), argv[2] if len(argv) > 2 else None)
        return 0
    if argv[:1] == ["_load"]:
        run_load(argv[1:])
        return 0
    args = parse_args(argv)

    key = SigningKey.generate()
    token = key.issue("user_bench", "oauth2client_bench", 3600)[0]
    upstream_port, gateway_port = free_port(), free_port()
    upstream_url, gateway_url = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{gateway_port}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    routes = tmp / "routes.toml"
    routes.write_text(ROUTES)
    profile = str(tmp / "gateway.prof") if args.profile else None
    gateway_env = dict(
        os.environ,
        BANK_TRANSACTIONS_URL=upstream_url,
        BANK_ACCOUNTS_URL=upstream_url,
        GATEWAY_ROUTES_FILE=str(routes),
        GATEWAY_RATE_LIMITS=json.dumps({"bench": {"rate": 1e9, "burst": 1_000_000_000}}),
        GATEWAY_NETWORK_API_KEY="bench-network-key",
        GATEWAY_UPSTREAM_TRANSPORT=args.upstream_transport,
    )
    load_before = round(os.getloadavg()[0], 2)
    print(
        f"gateway benchmark: {os.cpu_count()} CPUs (load average {load_before}), Python "
        f"{platform.python_version()}, {args.concurrency} connections, {args.warmup:g} s warm-up + "
        f"{args.seconds:g} s per run, upstream transport {args.upstream_transport}",
        flush=True,
    )
    upstream_env = dict(os.environ, BENCH_KEY_PEM=key.private_pem())
    with (
        running(spawn("_upstream", str(upstream_port), key.kid, env=upstream_env)) as upstream,
        running(spawn("_gateway", str(gateway_port), *([profile] if profile else []), env=gateway_env)) as gw,
    ):
        wait_ok(f"{upstream_url}/bench/ping", upstream)
        wait_ok(f"{gateway_url}/bench/ping", gw)
        wait_ok(f"{gateway_url}/bench-user/ping", gw, {"authorization": f"Bearer {token}"})
        watch = {"upstream": upstream.pid, "gateway": gw.pid}
        auth = {"authorization": f"Bearer {token}"}
        n, w, s = args.concurrency, args.warmup, args.seconds
        runs = [
            measure("direct", upstream_url, "/bench/ping", {}, n, w, s, watch),
            measure("gateway", gateway_url, "/bench/ping", {}, n, w, s, watch),
            measure("gateway+token", gateway_url, "/bench-user/ping", auth, n, w, s, watch),
            measure("direct, 1 connection", upstream_url, "/bench/ping", {}, 1, w / 2, s / 2, watch),
            measure("gateway, 1 connection", gateway_url, "/bench/ping", {}, 1, w / 2, s / 2, watch),
            measure("gateway+token, 1 conn.", gateway_url, "/bench-user/ping", auth, 1, w / 2, s / 2, watch),
        ]
    by_name = {r["name"]: r for r in runs}
    summary = {
        "throughput_kept": round(by_name["gateway"]["rps"] / by_name["direct"]["rps"], 3),
        "throughput_kept_with_token": round(by_name["gateway+token"]["rps"] / by_name["direct"]["rps"], 3),
        "added_p50_ms_loaded": round(by_name["gateway"]["p50_ms"] - by_name["direct"]["p50_ms"], 3),
        "added_p50_ms_unloaded": round(
            by_name["gateway, 1 connection"]["p50_ms"] - by_name["direct, 1 connection"]["p50_ms"], 3
        ),
        "added_p50_ms_unloaded_with_token": round(
            by_name["gateway+token, 1 conn."]["p50_ms"] - by_name["direct, 1 connection"]["p50_ms"], 3
        ),
    }
    print(
        f"\n  through the gateway: {summary['throughput_kept']:.0%} of direct throughput "
        f"({summary['throughput_kept_with_token']:.0%} with a token); p50 added: "
        f"{summary['added_p50_ms_unloaded']:.2f} ms unloaded "
        f"({summary['added_p50_ms_unloaded_with_token']:.2f} ms with a token), "
        f"{summary['added_p50_ms_loaded']:.2f} ms at {args.concurrency} connections"
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / ("gateway.json" if args.upstream_transport == "lean" else "gateway-httpx.json")
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "settings": {
                    "concurrency": args.concurrency,
                    "warmup_s": args.warmup,
                    "seconds": args.seconds,
                    "upstream_transport": args.upstream_transport,
                    # Other work on the machine skews every figure: the 1-minute load, before and after.
                    "load_average_before": load_before,
                    "load_average_after": round(os.getloadavg()[0], 2),
                },
                "runs": runs,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"  written to {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    if profile and Path(profile).exists():
        print("\n== gateway profile (cumulative, top 30) ==")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
        print("== gateway profile (own time, top 30) ==")
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
