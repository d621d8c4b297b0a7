"""Headless Chromium for the browser tests: Debian's `chromium` and `chromium-driver` packages.

Playwright drives the system browser (`executable_path=/usr/bin/chromium`): no browser is ever
downloaded by Playwright. `python -m bank.infra.browser` installs the packages with apt-get when
/usr/bin/chromium is missing (run as root, or with sudo available), and prints the browser's path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = Path(os.environ.get("BANK_CHROMIUM", "/usr/bin/chromium"))
PACKAGES = ("chromium", "chromium-driver")


class BrowserUnavailable(RuntimeError):
    pass


def _apt(*args: str) -> None:
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            raise BrowserUnavailable(
                f"{CHROMIUM} is missing and installing it needs root: apt-get install -y {' '.join(PACKAGES)}"
            )
        prefix = [sudo, "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", *args], check=True, env=env)


def ensure_chromium(*, quiet: bool = True) -> Path:
    """The system Chromium's path, installing the Debian packages first if it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise BrowserUnavailable(f"{CHROMIUM} is missing and there is no apt-get to install it with")
    if not quiet:
        print(f"installing {' '.join(PACKAGES)} with apt-get", file=sys.stderr)
    try:
        _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    except subprocess.CalledProcessError:
        _apt("update", "-q")  # a fresh image has no package lists yet
        _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    if not CHROMIUM.exists():
        raise BrowserUnavailable(f"apt-get installed {PACKAGES} but {CHROMIUM} is still missing")
    return CHROMIUM


def main() -> None:
    try:
        print(ensure_chromium(quiet=False))
    except (BrowserUnavailable, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"cannot provide a headless Chromium: {exc}") from None


if __name__ == "__main__":
    main()
