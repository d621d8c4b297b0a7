"""The card network's routes (`/network/*`, reached through the gateway or directly).

The credential is checked before the body is read: `Authorization: Bearer
<CARDS_NETWORK_API_KEY>`, or the bank's internal token (the gateway, which
checks the network's key itself, forwards with it). Bodies are parsed here
rather than by FastAPI so that a malformed message always gets a 400 with a
typed code and never an error text that echoes its input (a PAN).
"""

from __future__ import annotations

import hmac
from typing import Any

import pydantic_core
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.cards.advices import Advices
from services.cards.authorise import Authoriser
from services.cards.clearing import Clearing
from services.cards.network import (
    AdviceRequest,
    AdviceResponse,
    AuthorisationRequest,
    AuthorisationResponse,
    ClearingBatch,
    ClearingResponse,
    Presentment,
    ReversalRequest,
    ReversalResponse,
)
from services.cards.reversals import Reverser
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.errors import BankError
from shared.web import document_models, json_body_doc, malformed, read_body, read_model

MAX_BODY_BYTES = 2 * 1024 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed message: `{code, message, params: {param}}`, never an approval"},
    401: {"description": "no valid network credential"},
}


def _bad_credential() -> BankError:
    return BankError(
        "unauthorized.network",
        "the card network's routes need Authorization: Bearer <network key>",
        headers={"WWW-Authenticate": 'Bearer realm="card-network"'},
    )


async def require_network(request: Request) -> None:
    """FastAPI dependency. The app sets `app.state.network_api_key` and `app.state.internal_token`."""
    state = request.app.state
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), state.network_api_key.encode()
    ):
        return
    internal = request.headers.get(INTERNAL_TOKEN_HEADER)
    if internal is not None and hmac.compare_digest(internal.encode(), state.internal_token.encode()):
        return
    raise _bad_credential()


async def read_presentments(request: Request) -> list[Presentment]:
    """One presentment, or `{"presentments": [...]}`."""
    raw = await read_body(request, MAX_BODY_BYTES)
    try:
        doc = pydantic_core.from_json(raw)  # refuses lone surrogates, which PostgreSQL would
    except ValueError:
        raise BankError(
            "bad_request.malformed_message", "the body is not valid JSON", params={"param": "body"}
        ) from None
    try:
        if isinstance(doc, dict) and "presentments" in doc:
            return ClearingBatch.model_validate(doc).presentments
        return [Presentment.model_validate(doc)]
    except ValidationError as exc:
        raise malformed(exc) from None


def network_router(
    authoriser: Authoriser, advices: Advices, reverser: Reverser, clearing: Clearing
) -> APIRouter:
    api = APIRouter(prefix="/network", tags=["card network"], dependencies=[Depends(require_network)])

    @api.post(
        "/authorisations",
        response_model=AuthorisationResponse,
        responses=_ERRORS,
        openapi_extra=json_body_doc("AuthorisationRequest"),
    )
    async def authorisation(request: Request) -> JSONResponse:
        """0100 authorisation request → 0110. Idempotent on `network_transaction_id`: a repeat gets
        the original answer (and no second hold); another message under a used id gets 94."""
        msg = await read_model(request, AuthorisationRequest, MAX_BODY_BYTES)
        return JSONResponse(await authoriser.authorise(msg))

    @api.post(
        "/advices",
        response_model=AdviceResponse,
        responses=_ERRORS,
        openapi_extra=json_body_doc("AdviceRequest"),
    )
    async def advice(request: Request) -> JSONResponse:
        """0120 advice of a stand-in decision → 0130. Approved spends are force-posted."""
        msg = await read_model(request, AdviceRequest, MAX_BODY_BYTES)
        return JSONResponse(await advices.advise(msg))

    @api.post(
        "/reversals",
        response_model=ReversalResponse,
        responses=_ERRORS,
        openapi_extra=json_body_doc("ReversalRequest"),
    )
    async def reversal(request: Request) -> JSONResponse:
        """0400 reversal (full, or partial with `replacement_amount`) → 0410."""
        msg = await read_model(request, ReversalRequest, MAX_BODY_BYTES)
        return JSONResponse(await reverser.reverse(msg))

    @api.post(
        "/clearing",
        response_model=ClearingResponse,
        responses=_ERRORS,
        openapi_extra=json_body_doc("Presentment", "ClearingBatch"),
    )
    async def clear(request: Request) -> JSONResponse:
        """First presentments (1240), one or a batch → one result each. Idempotent per
        `presentment_id`; a `retry` result is to be sent again."""
        presentments = await read_presentments(request)
        return JSONResponse({"mti": "1250", "results": await clearing.present_all(presentments)})

    return api


def document_messages(app: FastAPI) -> None:
    """Put the request messages (parsed by hand above) into the OpenAPI components."""
    document_models(app, AuthorisationRequest, AdviceRequest, ReversalRequest, Presentment, ClearingBatch)
