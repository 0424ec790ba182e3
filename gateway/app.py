"""Build the ASGI app: load the catalog, connect Redis, open one HTTP client per provider, mount routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis

from gateway.api import health, images, models, providers
from gateway.api.errors import install_error_handlers
from gateway.auth import KeyVerifier
from gateway.catalog import Catalog
from gateway.dispatch import Dispatcher
from gateway.health_store import HealthStore
from gateway.image_fetch import ImageFetcher
from gateway.middleware import BodySizeLimitMiddleware, CancelOnDisconnectMiddleware, RequestIdMiddleware
from gateway.routing.policy import Router
from gateway.routing.retry_budget import RetryBudget
from gateway.services import Services
from gateway.settings import Settings
from gateway.usage import UsageMeter
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
    keys = KeyVerifier(settings.admin_key.get_secret_value())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(
            settings.redis_url or "",
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
        )
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
        health = HealthStore(redis, settings.breaker_policy(), cache_ttl_s=settings.health_cache_ttl_s)
        budget = RetryBudget(ratio=settings.retry_budget_ratio, min_retries=settings.retry_budget_min)
        app.state.services = Services(
            settings=settings,
            catalog=catalog,
            keys=keys,
            router=Router(),
            health=health,
            dispatcher=Dispatcher(adapters, UsageMeter(redis), health, budget),
            fetcher=fetcher,
            redis=redis,
        )
        try:
            yield
        finally:
            for adapter in adapters.values():
                await adapter.aclose()
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
