"""Usage events: one per provider attempt, appended to a Redis stream in one round trip.

Money is integer micro-USD. Every attempt is recorded with what the provider may bill for it: the served
one, a wasted one (it finished although another attempt was served, or before our cancel landed), a
failed or cleanly cancelled one at zero cost, and an unconfirmed one (our cancel failed) at full cost.
The stream is the true provider spend; only `served` events are the team's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.types import ImageRequest, ProviderJob

if TYPE_CHECKING:
    from gateway.routing.candidates import Candidate

log = logging.getLogger("gateway.usage")

USAGE_STREAM = "usage:events"


def _mp(value: Fraction) -> str:
    return f"{float(value):.6f}"


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One attempt at one provider, as finance and operators need it."""

    request_id: str
    ts_ms: int
    model: str
    deployment: str
    provider: str
    mode: str
    n: int
    width: int
    height: int
    input_images: int
    output_megapixels: str
    input_megapixels: str
    cost_micros: int
    latency_ms: int
    outcome: str  # "ok" or the error code that ended the attempt ("cancelled" when we abandoned it)
    disposition: str  # served | wasted | failed | cancelled | unconfirmed: what the spend bought
    provider_jobs: str
    user: str

    @classmethod
    def for_attempt(
        cls,
        request: ImageRequest,
        candidate: Candidate,
        outcome: str,
        elapsed_s: float,
        jobs: tuple[ProviderJob, ...] = (),
        *,
        disposition: str,
        cost_micros: int,
    ) -> UsageEvent:
        usage = candidate.usage
        deployment = candidate.deployment
        return cls(
            request_id=request.request_id,
            ts_ms=int(time.time() * 1000),
            model=deployment.model_id,
            deployment=deployment.key,
            provider=deployment.provider,
            mode=request.mode.value,
            n=request.n,
            width=request.width,
            height=request.height,
            input_images=len(request.images),
            output_megapixels=_mp(usage.output_megapixels) if cost_micros else "0",
            input_megapixels=_mp(usage.input_megapixels) if cost_micros else "0",
            cost_micros=cost_micros,
            latency_ms=round(elapsed_s * 1000),
            outcome=outcome,
            disposition=disposition,
            provider_jobs=",".join(job.job_id for job in jobs),
            user=request.user or "",
        )


class UsageMeter:
    """Appends usage events to the `usage:events` stream."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def record(self, event: UsageEvent) -> None:
        try:
            await self._redis.xadd(USAGE_STREAM, asdict(event))  # type: ignore[arg-type]
        except (RedisError, OSError):
            # The Redis-outage spool arrives with metering proper; until then the record is kept in the
            # log, whole, so it can be replayed by hand.
            log.error("usage record not stored in Redis: %s", asdict(event))
