"""Build the ASGI app: load the catalog, connect Redis, open one HTTP client per provider, mount routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from redis.asyncio import BlockingConnectionPool, Redis

from gateway.accounts.authenticator import Authenticator
from gateway.accounts.store import AccountStore
from gateway.api import admin, health, images, models, providers, usage
from gateway.api.errors import install_error_handlers
from gateway.catalog import Catalog
from gateway.dispatch import Dispatcher
from gateway.health_store import HealthStore
from gateway.image_fetch import ImageFetcher
from gateway.metering.admission import AdmissionControl
from gateway.metering.idempotency import IdempotencyStore
from gateway.metering.ledger import Ledger
from gateway.metering.quota import Quota
from gateway.metering.settlement import Settlement
from gateway.metering.spool import SpoolReplayer, UsageSpool
from gateway.middleware import BodySizeLimitMiddleware, CancelOnDisconnectMiddleware, RequestIdMiddleware
from gateway.routing.policy import Router
from gateway.routing.retry_budget import RetryBudget
from gateway.services import Services
from gateway.settings import Settings
from providers import ProviderAdapter, adapter_class

log = logging.getLogger("gateway")
IMAGE_PATHS = ("/v1/images/generations", "/v1/images/edits")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app; fails fast on a bad catalog, a missing admin key or a missing Redis URL."""
    settings = settings or Settings()
    if settings.admin_key is None or not settings.admin_key.get_secret_value():
        raise RuntimeError("GATEWAY_ADMIN_KEY is not set; the gateway refuses to start without an API key.")
    if not settings.redis_url:
        raise RuntimeError("GATEWAY_REDIS_URL is not set; `flux-gateway serve` starts an embedded Redis for you.")
    catalog = Catalog.from_yaml(settings.catalog_path)
    admin_key = settings.admin_key.get_secret_value()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A blocking pool: with redis-py's default (100, then an error), a busy instance would read a full pool
        # as "Redis is down" and, under the fail-open policy, admit requests without limits.
        pool = BlockingConnectionPool.from_url(
            settings.redis_url or "",
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
        )
        redis = Redis(connection_pool=pool)
        adapters: dict[str, ProviderAdapter] = {
            provider: adapter_class(provider)(settings.provider_endpoint(provider))
            for provider in sorted({d.provider for d in catalog.deployments})
        }
        fetcher = ImageFetcher(
            httpx.AsyncClient(
                timeout=httpx.Timeout(settings.provider_read_timeout_s, connect=settings.provider_connect_timeout_s),
                limits=httpx.Limits(max_connections=settings.provider_max_connections),
                follow_redirects=True,
            ),
            settings.max_output_image_bytes,
        )
        accounts = AccountStore(redis)
        health = HealthStore(redis, settings.breaker_policy(), cache_ttl_s=settings.health_cache_ttl_s)
        quota = Quota(redis)
        ledger = Ledger(redis)
        spool = UsageSpool(settings.data_dir / "spool")
        replayer = asyncio.create_task(
            SpoolReplayer(spool, ledger.settle, interval_s=settings.spool_replay_interval_s).run()
        )
        app.state.services = Services(
            settings=settings,
            catalog=catalog,
            accounts=accounts,
            authenticator=Authenticator(
                accounts,
                admin_key,
                cache_ttl_s=settings.auth_cache_ttl_s,
                stale_ttl_s=settings.auth_stale_ttl_s,
            ),
            router=Router(),
            health=health,
            admission=AdmissionControl(quota, fail_open=settings.budget_policy_on_redis_down == "open"),
            dispatcher=Dispatcher(
                adapters,
                health,
                RetryBudget(ratio=settings.retry_budget_ratio, min_retries=settings.retry_budget_min),
            ),
            settlement=Settlement(ledger, quota, spool),
            ledger=ledger,
            idempotency=IdempotencyStore(redis, ttl_s=settings.idempotency_ttl_s),
            spool=spool,
            fetcher=fetcher,
            redis=redis,
        )
        try:
            yield
        finally:
            replayer.cancel()
            await asyncio.gather(replayer, return_exceptions=True)
            dispatcher = app.state.services.dispatcher
            await dispatcher.drain()
            for adapter in adapters.values():
                await adapter.aclose()  # stops cancels still running, which report their jobs as FAILED...
            await dispatcher.drain()  # ...and those reports are metered before Redis closes
            await fetcher.aclose()
            await redis.aclose()

    app = FastAPI(
        title="flux-gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(images.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(providers.router)
    app.include_router(usage.router)
    app.include_router(admin.router)

    def body_limit(path: str) -> int:
        return (
            settings.max_upload_total_bytes + 1024 * 1024
            if path == "/v1/images/edits"
            else settings.max_json_body_bytes
        )

    app.add_middleware(CancelOnDisconnectMiddleware, paths=frozenset(IMAGE_PATHS))
    app.add_middleware(BodySizeLimitMiddleware, limit_for_path=body_limit)
    app.add_middleware(RequestIdMiddleware)
    return app
