"""Execute a routed request: attempts at provider adapters within one deadline, each attempt metered.

The router decides the order; dispatch runs it. Today one attempt is made (the first candidate); the
failover issue extends `Dispatcher.dispatch` to walk the rest. Cancelling the awaiting task (deadline,
client gone) reaches the adapter, which cancels the provider job before the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.exceptions import DeadlineExceeded, GatewayError, ProviderUnavailable
from gateway.routing.candidates import Candidate
from gateway.types import ImageRequest, ProviderJob, ProviderResult
from gateway.usage import UsageEvent, UsageMeter
from providers.base import ProviderAdapter


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one deployment and how it ended (`ok` or an error code)."""

    deployment_key: str
    outcome: str
    elapsed_s: float
    jobs: tuple[ProviderJob, ...] = ()


@dataclass(frozen=True, slots=True)
class Served:
    """A successful dispatch: who served it, what came back, and every attempt made."""

    candidate: Candidate
    result: ProviderResult
    attempts: tuple[Attempt, ...]


class Dispatcher:
    """Runs candidates against their adapters under a deadline and meters every attempt."""

    def __init__(self, adapters: Mapping[str, ProviderAdapter], meter: UsageMeter) -> None:
        self._adapters = adapters
        self._meter = meter

    async def dispatch(self, request: ImageRequest, candidates: list[Candidate], deadline: float) -> Served:
        """Serve `request` from the first candidate; `deadline` is in `asyncio` loop time."""
        candidate = candidates[0]
        deployment = candidate.deployment
        adapter = self._adapters[deployment.provider]
        started = time.monotonic()
        try:
            async with asyncio.timeout_at(deadline):
                result = await adapter.generate(deployment, request)
            _check_result(request, result, deployment.provider)
        except TimeoutError:
            attempt = Attempt(deployment.key, "deadline_exceeded", time.monotonic() - started)
            await self._meter.record(UsageEvent.for_attempt(request, candidate, attempt.outcome, attempt.elapsed_s))
            raise DeadlineExceeded(
                "No image arrived before the request deadline; the provider job was cancelled. "
                "Retry, or ask for fewer or smaller images."
            ) from None
        except GatewayError as exc:
            attempt = Attempt(deployment.key, exc.code or "error", time.monotonic() - started)
            await self._meter.record(UsageEvent.for_attempt(request, candidate, attempt.outcome, attempt.elapsed_s))
            raise
        attempt = Attempt(deployment.key, "ok", time.monotonic() - started, result.jobs)
        await self._meter.record(
            UsageEvent.for_attempt(request, candidate, "ok", attempt.elapsed_s, result.jobs, billed=True)
        )
        return Served(candidate, result, (attempt,))


def _check_result(request: ImageRequest, result: ProviderResult, provider: str) -> None:
    """Never pass on a different number or size of images than asked for."""
    if len(result.images) != request.n:
        raise ProviderUnavailable(
            f"The provider returned {len(result.images)} images instead of {request.n}.", provider=provider
        )
    for image in result.images:
        if image.width is not None and image.height is not None and (image.width, image.height) != request.size:
            raise ProviderUnavailable(
                f"The provider returned a {image.width}x{image.height} image instead of "
                f"{request.width}x{request.height}.",
                provider=provider,
            )
