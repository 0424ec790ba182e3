"""A minimal app serving the admin router over real HTTP (uvicorn in a thread), for API and CLI tests.

`app.state.services` is a stand-in holding just what the admin routes use: authenticator, accounts, catalog.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import SimpleNamespace

import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from gateway.accounts.authenticator import Authenticator
from gateway.accounts.store import AccountStore
from gateway.api import admin
from gateway.api.errors import install_error_handlers
from gateway.catalog import Catalog
from gateway.redis_server import free_port
from gateway.settings import PROJECT_ROOT

ADMIN_KEY = "sk-admin-test-key"


def admin_app(redis_url: str) -> FastAPI:
    """The admin router with the gateway's error handlers, on its own Redis client."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        accounts = AccountStore(redis)
        app.state.services = SimpleNamespace(
            authenticator=Authenticator(accounts, ADMIN_KEY, cache_ttl_s=0.0),
            accounts=accounts,
            catalog=Catalog.from_yaml(PROJECT_ROOT / "config" / "models.yaml"),
        )
        try:
            yield
        finally:
            await redis.aclose()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(admin.router)
    return app


@contextmanager
def serve_admin_app(redis_url: str) -> Iterator[str]:
    """Serve `admin_app` on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(admin_app(redis_url), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="admin-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the admin test app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
