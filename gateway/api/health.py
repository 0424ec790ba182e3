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
    """Readiness: 200 when the catalog is loaded; `degraded` while Redis is down (still serving, spooling)."""
    try:
        async with asyncio.timeout(svc.settings.redis_timeout_s):
            redis_ok = bool(await svc.redis.ping())
    except (RedisError, OSError, TimeoutError):
        redis_ok = False
    catalog = {"models": len(svc.catalog.models), "deployments": len(svc.catalog.deployments)}
    status = "unavailable" if not catalog["models"] else "ready" if redis_ok else "degraded"
    body: dict[str, object] = {"status": status, "redis": "ok" if redis_ok else "down", "catalog": catalog}
    if not redis_ok:
        body["spooled_usage_records"] = svc.spool.pending()
    return Response(
        orjson.dumps(body), status_code=503 if status == "unavailable" else 200, media_type="application/json"
    )
