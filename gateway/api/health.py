"""`GET /healthz` (the process is up) and `GET /readyz` (Redis answers and the catalog is loaded)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends
from redis.exceptions import RedisError
from starlette.responses import Response

from gateway.services import Services, services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """Liveness: answers while the event loop runs."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz")
async def readyz(svc: Annotated[Services, Depends(services)]) -> Response:
    """Readiness: 200 only when Redis answers a PING in time and the catalog has models."""
    try:
        async with asyncio.timeout(svc.settings.redis_timeout_s):
            redis_ok = bool(await svc.redis.ping())
    except (RedisError, OSError, TimeoutError):
        redis_ok = False
    catalog = {"models": len(svc.catalog.models), "deployments": len(svc.catalog.deployments)}
    ready = redis_ok and catalog["models"] > 0
    body = {"status": "ready" if ready else "unavailable", "redis": "ok" if redis_ok else "down", "catalog": catalog}
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")
