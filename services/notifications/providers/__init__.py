"""Push providers: what a send is, what can come of it, and the one interface APNs and FCM adapters share.

An adapter turns a `Push` into one HTTP request and the answer into a `SendResult`, classified the way
Apple and Google document their errors: delivered; retry later (429, 5xx, network trouble, an expired
provider credential); the device token is dead (deactivate the device, never retry); or a request that
will never succeed as it is (a bug: logged, not retried). `send_many` sends a batch's pushes together,
each on a stream of its own (`exchange_all`); `send` is a batch of one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring as json_string  # what json.dumps(ensure_ascii=False) uses
from typing import Any, Literal, Protocol

from services.notifications.providers.http2 import Http2Client, Http2Error, Response

log = logging.getLogger("services.notifications.providers")

# Both providers refuse a payload over 4 KiB (APNs: the JSON body; FCM: the message).
PAYLOAD_LIMIT = 4096

Outcome = Literal["sent", "retry", "invalid_token", "failed"]


@dataclass(frozen=True)
class Push:
    push_id: str  # a UUID: APNs' apns-id and collapse id, FCM's collapse key; the same on every retry
    token: str
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    status: int | None = None  # HTTP status, None when no answer came
    reason: str = ""  # the provider's reason / error code, or the transport error
    retry_after: float | None = None  # seconds, from a Retry-After header
    provider_id: str | None = None  # apns-id / FCM message name


class Provider(Protocol):
    platform: str

    async def send(self, push: Push) -> SendResult: ...

    async def send_many(self, pushes: Sequence[Push]) -> list[SendResult]:
        """Each push's result, in order."""
        ...

    async def aclose(self) -> None: ...


async def exchange_all(
    client: Http2Client,
    pushes: Sequence[Push],
    request: Callable[[Push], tuple[str, bytes, bytes]],
    classify: Callable[[Response], SendResult],
) -> list[SendResult]:
    """Every push as a request (path, header fields, body), all sent together; each answer classified.
    A push that cannot be rendered or classified (a bug) is retried with backoff and logged, alone."""
    results: list[SendResult] = [_RETRY] * len(pushes)
    requests, positions = [], []
    for i, push in enumerate(pushes):
        try:
            requests.append(request(push))
            positions.append(i)
        except Exception as exc:  # must not hold up (or re-send) the rest of the batch
            log.exception("push %s could not be rendered; it will be tried again", push.push_id)
            results[i] = SendResult("retry", None, f"{type(exc).__name__}: {exc}")
    answers = await client.request_many(requests)
    for i, answer in zip(positions, answers, strict=True):
        try:
            if isinstance(answer, Response):
                results[i] = classify(answer)
                continue
            if not isinstance(answer, Http2Error):
                raise answer
        except Exception as exc:
            log.exception("push %s could not be sent; it will be tried again", pushes[i].push_id)
            answer = exc
        results[i] = SendResult("retry", None, f"{type(answer).__name__}: {answer}")
    return results


_RETRY = SendResult("retry", None, "not sent")


def compact_json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def plain_data(data: dict[str, str], *reserved: str) -> bool:
    """Whether a push's data can be rendered by the adapters' string templates: string values only, and
    none of the keys the template writes itself (else they render it with `compact_json`)."""
    return all(type(v) is str for v in data.values()) and not any(k in data for k in reserved)


def json_members(data: dict[str, str]) -> str:
    """`,"k":"v"` for each item: the members of a JSON object, as compact_json writes them."""
    return "".join([f",{json_string(k)}:{json_string(v)}" for k, v in data.items()])
