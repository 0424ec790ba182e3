"""Which deployments may serve a request exactly, and what each would charge for it.

Pure logic: no I/O, no provider names. Ordering them is `gateway.routing.policy`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.catalog import Deployment, ModelRef
from gateway.exceptions import InvalidRequest
from gateway.pricing import Usage
from gateway.sizes import format_size, nearest_sizes
from gateway.types import ImageRequest


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment that can serve the request exactly, with this request's cost there."""

    deployment: Deployment
    usage: Usage


def eligible_candidates(ref: ModelRef, request: ImageRequest) -> list[Candidate]:
    """Deployments of the model (or the pinned provider) that serve the mode and produce the exact size."""
    serving = ref.model.deployments_for(request.mode, ref.pinned_provider)
    if not serving:
        raise InvalidRequest(
            f"Provider '{ref.pinned_provider}' does not serve {request.mode.value} for '{ref.model.id}'; "
            f"use '{ref.model.id}' to let the gateway choose.",
            param="model",
        )
    candidates = [
        Candidate(d, d.pricing.usage(request, d.sizes.nominal_megapixels(request.width, request.height)))
        for d in serving
        if d.sizes.supports(request.width, request.height)
    ]
    if not candidates:
        nearest = ", ".join(format_size(s) for s in nearest_sizes((d.sizes for d in serving), *request.size))
        raise InvalidRequest(
            f"Size {format_size(request.size)} cannot be produced exactly by '{ref.model.id}'"
            f"{f' on {ref.pinned_provider}' if ref.pinned_provider else ''}; nearest available: {nearest}.",
            param="size",
        )
    return candidates
