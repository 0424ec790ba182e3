"""The per-process bundle of long-lived objects that request handlers use, and the auth dependency."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import Redis

from gateway.accounts.authenticator import Authenticator
from gateway.accounts.principal import Principal
from gateway.accounts.store import AccountStore
from gateway.catalog import Catalog
from gateway.dispatch import Dispatcher
from gateway.health_store import HealthStore
from gateway.image_fetch import ImageFetcher
from gateway.metering.admission import AdmissionControl
from gateway.metering.idempotency import IdempotencyStore
from gateway.metering.ledger import Ledger
from gateway.metering.settlement import Settlement
from gateway.metering.spool import UsageSpool
from gateway.routing.policy import Router
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request handler needs, built once per process in the app's lifespan."""

    settings: Settings
    catalog: Catalog
    accounts: AccountStore
    authenticator: Authenticator
    router: Router
    health: HealthStore
    admission: AdmissionControl
    dispatcher: Dispatcher
    settlement: Settlement
    ledger: Ledger
    idempotency: IdempotencyStore
    spool: UsageSpool
    fetcher: ImageFetcher
    redis: Redis


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request's services and principal."""

    svc: Services
    principal: Principal


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a threadpool,
# which costs two thread hand-offs per request on the hot path.
async def services(request: Request) -> Services:
    """FastAPI dependency: the process's `Services`."""
    svc: Services = request.app.state.services
    return svc


async def authenticated(request: Request) -> Caller:
    """FastAPI dependency: the caller, once its key checks out (401 otherwise)."""
    svc: Services = request.app.state.services
    return Caller(svc, await svc.authenticator.authenticate(request.headers.get("authorization")))
