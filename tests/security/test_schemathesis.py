"""Property-based fuzzing of every public operation, from the gateway's merged /openapi.json.

Schemathesis generates requests from each operation's schema (valid and not), sends them through the
gateway with a real customer's token (the network key on /network/*), and checks that the bank never
answers 5xx and that every answer whose status the schema documents matches its documented schema.
Every other case names the fuzzing customer's real account, card, device... so the operations act on
real things, not only on made-up ids. Bounded (FUZZ_EXAMPLES per operation, 25 by default) for CI;
`FUZZ_EXAMPLES=500` for a long run.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.security.conftest import SecurityBank
from tests.security.support import NETWORK_KEY, Person, id_kind, operations, sign_up

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FIGURES: Counter[str] = Counter()
STATUSES: Counter[str] = Counter()
FAILURES: list[str] = []
_turn = itertools.count()


@pytest.fixture(scope="session")
def fuzz_target(security_bank: SecurityBank) -> tuple[SecurityBank, Person, dict[str, str]]:
    """A customer of its own (the fuzzer freezes, cancels and deletes what it finds)."""
    import asyncio

    person = asyncio.run(sign_up(security_bank.cluster.accounts_direct, security_bank.url, "Fuzz"))
    auth = {op.label: op.auth for op in operations(security_bank.openapi)}
    return security_bank, person, auth


def test_every_operation_never_5xx_and_answers_match_their_schema(
    fuzz_target: tuple[SecurityBank, Person, dict[str, str]],
) -> None:
    bank, person, auth = fuzz_target
    schema = schemathesis.openapi.from_dict(json.loads(json.dumps(bank.openapi)))
    broken: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        failure = _fuzz(
            operation, bank, person, auth.get(f"{operation.method.upper()} {operation.path}", "none")
        )
        if failure:
            broken.append(failure)
    assert FIGURES["cases"] >= EXAMPLES * 10, broken[:3]
    assert not broken, f"{len(broken)} operations failed:\n\n" + "\n\n".join(broken)


def _fuzz(operation: Any, bank: SecurityBank, person: Person, kind: str) -> str | None:
    """Fuzz one operation; the failure (with Hypothesis' smallest example), or None."""
    label = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        headers: dict[str, str] = {}
        if kind == "user":
            headers["Authorization"] = f"Bearer {person.token}"
            if next(_turn) % 2:
                _use_real_ids(case, person)
        elif kind == "network":
            headers["x-network-key"] = NETWORK_KEY
        else:  # sign-up and sign-in are rate limited per client IP: every case its own client
            headers["X-Forwarded-For"] = f"10.{_octet()}.{_octet()}.{_octet()}"
        FIGURES["cases"] += 1
        FIGURES[f"op:{label}"] += 1
        response = case.call(base_url=bank.url, headers=headers, timeout=30)
        STATUSES[str(response.status_code)] += 1
        if response.status_code >= 500:
            FIGURES["5xx"] += 1
            FAILURES.append(f"{label} -> {response.status_code} {response.text[:200]}")
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; failures reported together
        return f"{label}: {str(exc)[:1500]}"
    return None


def _octet() -> int:
    return secrets.randbelow(250)


def _use_real_ids(case: Any, person: Person) -> None:
    class _Op:  # id_kind looks only at the path
        path = case.path

    for container in (case.path_parameters, case.query):
        for name in list(container or {}):
            real = person.ids.get(id_kind(_Op, name))  # type: ignore[arg-type]
            if real:
                container[name] = real
    if isinstance(case.body, dict):
        for name in list(case.body):
            real = person.ids.get(id_kind(_Op, name))  # type: ignore[arg-type]
            if real:
                case.body[name] = real


@pytest.fixture(scope="session", autouse=True)
def _fuzz_figures() -> Any:
    yield
    if FIGURES["cases"]:
        ops = sorted(k.removeprefix("op:") for k in FIGURES if k.startswith("op:"))
        doc = {
            "operations": len(ops),
            "cases": FIGURES["cases"],
            "5xx": FIGURES["5xx"],
            "statuses": dict(STATUSES),
            "examples_per_operation": EXAMPLES,
            "failures": FAILURES[:50],
        }
        out = Path(os.environ.get("BANK_TEST_REPORTS", tempfile.gettempdir())) / "bank-fuzz.json"
        out.write_text(json.dumps(doc, indent=1))
        print(f"\nfuzzing: {doc['operations']} operations, {doc['cases']} cases, {doc['5xx']} 5xx ({out})")
