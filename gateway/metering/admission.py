"""Admission: rate limits, concurrency and the worst-case budget reservation, before any provider call.

One Redis round trip (`Quota.admit`). The admin key has no limits and skips it. If Redis is down, the
budget policy decides: fail open (serve; usage is spooled and settled later) or fail closed (503).
"""

from __future__ import annotations

import logging
import math
import time

from gateway.accounts.principal import Principal
from gateway.exceptions import MeteringUnavailable, QuotaExceeded
from gateway.metering.quota import Quota, QuotaDecision
from gateway.metering.settlement import REDIS_DOWN, Admitted
from gateway.pricing import format_usd

log = logging.getLogger("gateway.metering")


class AdmissionControl:
    """Admits a request against its key's and team's limits, or refuses it with a 429."""

    def __init__(self, quota: Quota, *, fail_open: bool) -> None:
        self._quota = quota
        self._fail_open = fail_open

    async def admit(
        self, principal: Principal, request_id: str, reserve_micros: int
    ) -> tuple[Admitted, QuotaDecision | None]:
        """Reserve `reserve_micros` (the dearest candidate's cost) for `request_id`, or raise QuotaExceeded."""
        started = time.perf_counter()
        if principal.is_admin:
            return Admitted(principal, request_id, 0, started, in_redis=False), None
        try:
            decision = await self._quota.admit(principal, request_id, reserve_micros)
        except REDIS_DOWN:
            if not self._fail_open:
                raise MeteringUnavailable(
                    "Usage metering is unavailable, and this gateway is set to refuse requests until it is back. "
                    "Retry shortly."
                ) from None
            log.warning("Redis unavailable: admitting %s without limits (fail-open budget policy)", request_id)
            return Admitted(principal, request_id, reserve_micros, started, in_redis=False), None
        if not decision.allowed:
            raise quota_error(principal, decision, reserve_micros)
        return Admitted(principal, request_id, reserve_micros, started), decision


def quota_error(principal: Principal, decision: QuotaDecision, reserve_micros: int) -> QuotaExceeded:
    """The 429 for a refused admission, naming the limit and what to do."""
    who = f"key '{principal.key_id}'" if decision.scope == "key" else f"team '{principal.team}'"
    limits = principal.key_limits if decision.scope == "key" else principal.team_limits
    if decision.reason == "budget":
        left = decision.budget_remaining_micros or 0
        return QuotaExceeded(
            f"The {limits.budget_period.value} budget of {who} has ${format_usd(max(left, 0))} left, and this request "
            f"may cost up to ${format_usd(reserve_micros)}. Ask an admin to raise the budget, or request fewer or "
            "smaller images.",
            code="insufficient_quota",
            error_type="insufficient_quota",
            headers=rate_headers(decision),
        )
    if decision.reason == "concurrency":
        return QuotaExceeded(
            f"Too many requests in flight for {who} (limit {limits.concurrency}); retry when one finishes.",
            code="concurrency_limit_exceeded",
            retry_after=decision.retry_after_s or 1.0,
            headers=rate_headers(decision),
        )
    return QuotaExceeded(
        f"Rate limit reached for {who}: {limits.rpm} requests per minute. Retry after "
        f"{math.ceil(decision.retry_after_s or 1)} s.",
        code="rate_limit_exceeded",
        retry_after=decision.retry_after_s or 1.0,
        headers=rate_headers(decision),
    )


def rate_headers(decision: QuotaDecision | None) -> dict[str, str]:
    """OpenAI-style `x-ratelimit-*` headers for the tightest requests-per-minute limit, if any."""
    if decision is None or decision.rpm_limit is None:
        return {}
    headers = {"x-ratelimit-limit-requests": str(decision.rpm_limit)}
    if decision.rpm_remaining is not None:
        headers["x-ratelimit-remaining-requests"] = str(max(0, decision.rpm_remaining))
    if decision.rpm_reset_s is not None:
        headers["x-ratelimit-reset-requests"] = f"{max(0.0, decision.rpm_reset_s):.3f}s"
    return headers
