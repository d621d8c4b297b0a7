"""The merged /openapi.json over real sockets, and the merge rules on their own."""

from __future__ import annotations

from typing import Any

from services.gateway.openapi import merge
from tests.gateway.conftest import Gateway, Upstreams, gateway_settings, lab_table


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }


async def test_one_document_with_only_the_exposed_paths(gateway: Gateway, upstreams: Upstreams) -> None:
    async with gateway.client() as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    ops = operations(doc)
    assert ("GET", "/accounts") in ops  # from accounts
    assert ("GET", "/cards") in ops  # from cards
    assert ("POST", "/network/authorisations") in ops
    assert ("GET", "/ops/health") in ops  # the gateway's own
    assert not [p for p in doc["paths"] if p.startswith("/internal")]
    assert ("GET", "/oauth2/jwks.json") in ops  # public, routed
    for hidden in ("/unrouted", "/oauth2/revocations", "/healthz", "/metrics"):
        assert hidden not in doc["paths"], hidden
    assert doc["paths"]["/accounts"]["get"]["security"] == [{"accessToken": []}]
    assert doc["paths"]["/network/authorisations"]["post"]["security"] == [{"networkKey": []}]
    assert "Incomplete" not in doc["info"]["description"]

    schemas = doc["components"]["schemas"]
    # Both services call their model "…Model"; the names differ here, so both are kept as they are.
    assert {"AccountsModel", "CardsModel"} <= set(schemas)
    assert "HTTPValidationError" not in schemas or schemas["HTTPValidationError"]["type"] == "object"
    refs = str(doc["paths"])
    for name in schemas:
        assert f"#/components/schemas/{name}" in refs or any(
            f"#/components/schemas/{name}" in str(s) for s in schemas.values()
        ), f"unreferenced component {name}"


async def test_an_upstream_down_is_missing_and_said_so(lab: Gateway) -> None:
    async with lab.client() as client:
        doc = (await client.get("/openapi.json")).json()
    assert "Incomplete" in doc["info"]["description"]
    assert "notifications" in doc["info"]["description"]
    assert "/accounts" in doc["paths"]  # the others are still there


def test_clashing_component_names_are_renamed_and_refs_follow() -> None:
    table = lab_table(gateway_settings(rate_limits={"tight": {"rate": 1, "burst": 1}}))

    def doc(path: str, thing: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "paths": {
                path: {"get": {"responses": {"200": {"$ref": "#/components/responses/Ok"}}}},
                "/internal/x": {"get": {"responses": {"200": {"$ref": "#/components/schemas/Secret"}}}},
            },
            "components": {
                "responses": {
                    "Ok": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}
                    }
                },
                "schemas": {"Thing": thing, "Secret": {"type": "string"}, **(extra or {})},
            },
        }

    merged = merge(
        {
            "cards": doc("/lp", {"type": "object", "properties": {"last4": {"type": "string"}}}),
            "transactions": doc("/slow", {"type": "object", "properties": {"amount": {"type": "integer"}}}),
        },
        table,
    )
    schemas = merged["components"]["schemas"]
    assert set(schemas) == {"Thing", "transactions_Thing"}  # Secret is only used by /internal: pruned
    assert set(merged["components"]["responses"]) == {"Ok", "transactions_Ok"}
    assert (
        merged["paths"]["/slow"]["get"]["responses"]["200"]["$ref"]
        == "#/components/responses/transactions_Ok"
    )
    assert merged["components"]["responses"]["transactions_Ok"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/transactions_Thing"
    }
    assert "/internal/x" not in merged["paths"]
