"""The image's HEALTHCHECK: GET /healthz of the service this container runs; exit 0 if it answers 200.

The service is the last argument of PID 1 (`bank serve NAME`); its port comes from BANK_<NAME>_URL as for
`bank serve` itself (shared.config.BankSettings.port_of). A container running something else (the
one-shot `bank migrate`, the fake push provider) has no /healthz to ask and counts as healthy.
Standard library only: it must stay cheap, it runs every few seconds in every container.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

SERVICES = ("gateway", "accounts", "cards", "transactions", "webhooks", "notifications")
DEFAULT_PORTS = dict(zip(SERVICES, range(8000, 8006), strict=True))


def served_service(cmdline: list[str]) -> str | None:
    """`[..., 'bank', 'serve', 'cards']` -> 'cards'; anything else -> None."""
    if "serve" in cmdline:
        rest = cmdline[cmdline.index("serve") + 1 :]
        if rest and rest[0] in SERVICES:
            return rest[0]
    return None


def port_of(service: str, environ: dict[str, str]) -> int:
    url = environ.get(f"BANK_{service.upper()}_URL")
    if not url:
        return DEFAULT_PORTS[service]
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def main() -> int:
    raw = Path("/proc/1/cmdline").read_bytes()
    service = served_service([arg.decode() for arg in raw.split(b"\0") if arg])
    if service is None:
        return 0
    url = f"http://127.0.0.1:{port_of(service, dict(os.environ))}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # loopback, fixed scheme
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
