"""The answer to `?dry_run=true`: each eligible deployment's cost and health, and what the policy picks.

Nothing is sent to a provider and nothing is recorded.
"""

from __future__ import annotations

from typing import Any

from gateway.dispatch import nothing_to_try
from gateway.pricing import format_usd
from gateway.routing.policy import RankedCandidate, RoutePlan
from gateway.types import ImageRequest


def route_preview(model_id: str, request: ImageRequest, plan: RoutePlan) -> dict[str, Any]:
    """A JSON-ready description of `plan` for `request`; raises as dispatch would if nothing can serve it."""
    if not plan.ranked:
        raise nothing_to_try(plan)
    return {
        "object": "image.route",
        "dry_run": True,
        "model": model_id,
        "mode": request.mode.value,
        "size": f"{request.width}x{request.height}",
        "n": request.n,
        "policy": plan.policy.value,
        "chosen": plan.ranked[0].key,
        "candidates": [_candidate(r) for r in plan.ranked],
        "excluded": [{"deployment": e.key, "reason": e.reason, "retry_at": e.retry_at} for e in plan.excluded],
    }


def _candidate(ranked: RankedCandidate) -> dict[str, Any]:
    usage = ranked.candidate.usage
    return {
        "deployment": ranked.key,
        "provider": ranked.candidate.deployment.provider,
        "cost_usd": format_usd(usage.cost_micros),
        "cost_micros": usage.cost_micros,
        "output_megapixels": round(float(usage.output_megapixels), 6),
        "input_megapixels": round(float(usage.input_megapixels), 6),
        "expected_latency_s": _round(ranked.expected_latency_s),
        "p95_latency_s": _round(ranked.p95_latency_s),
        "admission": ranked.admission.value,
    }


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
