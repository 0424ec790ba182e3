"""Every failure leaves the gateway in OpenAI's error shape, with no stack trace and no secret."""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from gateway.exceptions import GatewayError, ProviderAuthError, ProviderError

log = logging.getLogger("gateway.errors")


def error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON error body `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def gateway_error_response(exc: GatewayError) -> Response:
    headers = {**(exc.headers or {}), "x-should-retry": "true" if exc.retryable else "false"}
    if exc.retryable and (exc.retry_after is not None or exc.status_code in (429, 503)):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after or 1)))
    return error_response(exc.status_code, exc.message, exc.error_type, param=exc.param, code=exc.code, headers=headers)


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if isinstance(exc, ProviderAuthError):
        # Our credentials are wrong: an operator must act. The client only learns the provider failed.
        log.error("provider %s rejected the gateway's credentials: %s", exc.provider, exc.message)
    elif isinstance(exc, ProviderError):
        log.warning("provider %s failed (%s): %s", exc.provider, exc.code, exc.message)
    return gateway_error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(
            404, f"Unknown URL: {request.method} {request.url.path}", "invalid_request_error", code="unknown_url"
        )
    if exc.status_code == 405:
        return error_response(
            405,
            f"Method {request.method} is not allowed on {request.url.path}.",
            "invalid_request_error",
            code="method_not_allowed",
        )
    return error_response(exc.status_code, str(exc.detail), "invalid_request_error")


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    return error_response(
        400,
        f"Invalid parameter {param or ''}: {first.get('msg', 'invalid')}.".replace(" :", ":"),
        "invalid_request_error",
        param=param,
    )


async def _on_client_disconnect(request: Request, exc: Exception) -> Response:
    # The client left before its body was read: nothing was dispatched, and nobody is there to answer.
    log.info("client left before sending its whole request: %s %s", request.method, request.url.path)
    return Response(status_code=499)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # The last line of defence: log the traceback for operators, tell the client nothing internal.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        500,
        "The gateway hit an internal error. It has been logged; retry shortly.",
        "server_error",
        code="internal_error",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type the app can raise to its OpenAI-shaped answer."""
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(Exception, _on_unexpected)
