"""The `Idempotency-Key` header, as Stripe does it: a retry gets the first answer and is billed once.

Keys are scoped to the caller's team and kept 24 h. A concurrent duplicate waits for the first request
instead of running again; the same key with a different request is a 409. Outcomes that a retry could
change (5xx, 429) are not stored, so the retry runs; deterministic ones (2xx, other 4xx) are replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.errors import gateway_error_response
from gateway.exceptions import Conflict, GatewayError, InvalidRequest
from gateway.metering.idempotency import IdemState, StoredResponse, fingerprint
from gateway.metering.settlement import REDIS_DOWN
from gateway.services import Caller

log = logging.getLogger("gateway.idempotency")
IDEMPOTENCY_HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"


async def idempotent(
    caller: Caller, request: Request, body: bytes, handler: Callable[[], Awaitable[Response]]
) -> Response:
    """Run `handler` at most once per (team, Idempotency-Key); replay its stored answer to retries."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return await handler()
    store = caller.svc.idempotency
    team = caller.principal.team
    print_ = fingerprint(request.method, request.url.path, body)
    try:
        begin = await store.begin(team, key, print_)
        if begin.state is IdemState.IN_PROGRESS:
            begin = await store.wait(team, key, print_, timeout_s=caller.svc.settings.request_timeout_s)
    except ValueError:
        raise InvalidRequest(
            "The Idempotency-Key header is too long (at most 255 characters).", param="Idempotency-Key"
        ) from None
    except REDIS_DOWN:
        log.warning("Redis unavailable: serving without idempotency for key on team %s", team)
        return await handler()
    if begin.state is IdemState.MISMATCH:
        raise Conflict(
            "This Idempotency-Key was already used with a different request; use a new key for a new request.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    if begin.state is IdemState.IN_PROGRESS:
        raise Conflict(
            "A request with this Idempotency-Key is still in progress; retry shortly.",
            code="idempotency_key_in_progress",
            param="Idempotency-Key",
        )
    if begin.state is IdemState.DONE and begin.response is not None:
        stored = begin.response
        return Response(stored.body, status_code=stored.status, headers={**stored.headers, REPLAYED_HEADER: "true"})

    try:
        response = await handler()
    except GatewayError as exc:
        if exc.status_code >= 500 or exc.status_code == 429:
            await _quietly(store.abandon(team, key, print_))
        else:
            await _quietly(store.complete(team, key, print_, _stored(gateway_error_response(exc))))
        raise
    except BaseException:
        await _quietly(store.abandon(team, key, print_))
        raise
    await _quietly(store.complete(team, key, print_, _stored(response)))
    return response


def _stored(response: Response) -> StoredResponse:
    skip = {"content-length", "x-request-id"}
    headers = {k: v for k, v in response.headers.items() if k.lower() not in skip}
    return StoredResponse(response.status_code, headers, bytes(response.body))


async def _quietly(call: Awaitable[None]) -> None:
    try:
        await call
    except REDIS_DOWN:
        log.warning("Redis unavailable: could not store an idempotent response")
