"""Small pure-ASGI middleware: request ids, request body caps, cancel-on-disconnect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.exceptions import PayloadTooLarge

REQUEST_ID_HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Gives every request an id (`scope["state"]["request_id"]`) and returns it as `x-request-id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    """Refuses request bodies over a per-path cap with 413, without buffering them first."""

    def __init__(self, app: ASGIApp, limit_for_path: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for_path = limit_for_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for_path(scope["path"])
        declared = _content_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            # Raised from inside the route's body read, so the route's error handler answers 413.
            if declared is not None and declared > limit:
                raise PayloadTooLarge(f"Request body is {declared} bytes; the limit here is {limit} bytes.")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"Request body is over the {limit}-byte limit.")
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class CancelOnDisconnectMiddleware:
    """Cancels a request's handler when its client disconnects, so provider jobs are cancelled too.

    Starlette keeps running a plain handler after the client is gone; image requests hold paid provider
    work, so on `http.disconnect` the handler task is cancelled and the cancellation reaches the adapters.
    """

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        body_done = asyncio.Event()
        disconnected = asyncio.Event()

        async def app_receive() -> Message:
            if body_done.is_set():
                # Past its body the app only reads to learn of a disconnect: the watcher owns receive().
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                body_done.set()
            return message

        handler = asyncio.create_task(self.app(scope, app_receive, send))

        async def watch() -> None:
            await body_done.wait()
            if (await receive())["type"] == "http.disconnect":
                disconnected.set()
                handler.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not disconnected.is_set():
                handler.cancel()  # we were cancelled ourselves (shutdown): take the handler with us
                raise
            # The client is gone: there is no one to answer.
        finally:
            watcher.cancel()
