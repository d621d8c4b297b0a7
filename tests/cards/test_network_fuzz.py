"""Whatever the network sends, cards answers 200 or a typed 400: never a 5xx, never an approval for
a message that does not parse. Messages are valid ones with a field removed or replaced by any JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cards.conftest import Bank, authorisation, presentment, reversal

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
PATHS = ("authorisations", "advices", "reversals", "clearing")


def mutate(message: dict[str, Any], data: st.DataObject) -> Any:
    how = data.draw(st.sampled_from(["drop", "replace", "replace_merchant", "whole"]))
    if how == "whole":
        return data.draw(JSON)
    target = dict(message)
    if how == "replace_merchant" and isinstance(target.get("merchant"), dict):
        merchant = dict(target["merchant"])
        merchant[data.draw(st.sampled_from(sorted(merchant)))] = data.draw(JSON)
        target["merchant"] = merchant
        return target
    key = data.draw(st.sampled_from(sorted(target)))
    if how == "drop":
        del target[key]
    else:
        target[key] = data.draw(JSON)
    return target


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_fuzzed_messages_never_5xx_and_never_approve_garbage(bank: Bank, data: st.DataObject) -> None:
    if not hasattr(bank, "fuzz_card"):
        customer = await bank.customer(balance=1_000_000)
        bank.fuzz_card = await bank.issue(customer)  # type: ignore[attr-defined]
    card: dict[str, Any] = bank.fuzz_card  # type: ignore[attr-defined]
    path = data.draw(st.sampled_from(PATHS))
    base = authorisation(card)
    valid = {
        "authorisations": base,
        "advices": {**base, "mti": "0120", "response_code": "00"},
        "reversals": reversal(base),
        "clearing": presentment(card, 500, base["network_transaction_id"]),
    }[path]
    body = mutate(valid, data)
    r = await bank.http.post(
        f"/network/{path}",
        content=json.dumps(body, allow_nan=False).encode(),
        headers={**bank.network_headers, "content-type": "application/json"},
    )
    assert r.status_code in (200, 400), (r.status_code, r.text)
    answer = r.json()
    assert card["pan"] not in r.text
    if r.status_code == 400:
        assert answer["code"].startswith("bad_request.") and "param" in answer["params"]
        assert "response_code" not in answer
        nid = body.get("network_transaction_id") if isinstance(body, dict) else None
        if path == "authorisations" and nid == base["network_transaction_id"]:  # (a drawn id may be reused)
            assert (
                await bank.rows("SELECT 1 FROM cards.authorisations WHERE network_transaction_id = :n", n=nid)
                == []
            )
