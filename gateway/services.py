"""The per-process bundle of long-lived objects that request handlers use."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import Redis

from gateway.auth import KeyVerifier
from gateway.catalog import Catalog
from gateway.dispatch import Dispatcher
from gateway.health_store import HealthStore
from gateway.image_fetch import ImageFetcher
from gateway.routing.policy import Router
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request handler needs, built once per process in the app's lifespan."""

    settings: Settings
    catalog: Catalog
    keys: KeyVerifier
    router: Router
    health: HealthStore
    dispatcher: Dispatcher
    fetcher: ImageFetcher
    redis: Redis


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a threadpool,
# which costs two thread hand-offs per request on the hot path.
async def services(request: Request) -> Services:
    """FastAPI dependency: the process's `Services`."""
    svc: Services = request.app.state.services
    return svc


async def authenticated(request: Request) -> Services:
    """FastAPI dependency: the process's `Services`, once the caller's key checks out."""
    svc: Services = request.app.state.services
    svc.keys.verify(request.headers.get("authorization"))
    return svc
