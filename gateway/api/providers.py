"""`GET /v1/providers`: every deployment's breaker state, latency estimates, recent success rate, price."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends
from starlette.responses import Response

from gateway.catalog import deployment_summary
from gateway.routing.health import DeploymentHealth
from gateway.services import Caller, authenticated

router = APIRouter()


@router.get("/v1/providers")
async def list_providers(caller: Annotated[Caller, Depends(authenticated)]) -> Response:
    """The fleet's shared view of each deployment (read from Redis, as every instance sees it)."""
    svc = caller.svc
    deployments = svc.catalog.deployments
    health = await svc.health.snapshot([d.key for d in deployments])
    now = time.time()
    data = [{**deployment_summary(d), "model": d.model_id, "health": _health(health[d.key], now)} for d in deployments]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


def _health(state: DeploymentHealth, now: float) -> dict[str, Any]:
    rate = state.success_rate
    return {
        "state": state.state.value,
        "admission": state.admission(now).value,
        "retry_in_s": round(max(0.0, state.retry_at - now), 3) if state.retry_at else 0.0,
        "consecutive_failures": state.consecutive_failures,
        "probes_in_flight": state.probes_in_flight,
        "window_successes": state.window_successes,
        "window_failures": state.window_failures,
        "success_rate": round(rate, 4) if rate is not None else None,
        "latency_s_per_mp": _round(state.latency_s_per_mp),
        "latency_p95_s_per_mp": _round(state.latency_p95_s_per_mp),
        "latency_samples": state.latency_samples,
    }


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
