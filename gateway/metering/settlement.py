"""From a finished dispatch to the request's one usage record: settled in Redis, or spooled if it is down.

Settling is exactly once: the ledger deduplicates by request id, so a spooled record replayed after a
crash, or twice, still counts once. A request that reached no provider has no record; its admission
(concurrency slots, budget reservation) is simply released.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from gateway.accounts.principal import Principal
from gateway.dispatch import DispatchReport
from gateway.metering.ledger import Ledger
from gateway.metering.quota import Quota
from gateway.metering.records import UsageRecord
from gateway.metering.spool import UsageSpool

log = logging.getLogger("gateway.metering")
REDIS_DOWN = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Admitted:
    """What admission granted one request, for settling it later."""

    principal: Principal
    request_id: str
    reserved_micros: int
    started: float  # time.perf_counter() at arrival
    in_redis: bool = True  # False: Redis was down and the budget policy let the request through


class Settlement:
    """Settles dispatch reports into the ledger, falling back to the local spool."""

    def __init__(self, ledger: Ledger, quota: Quota, spool: UsageSpool) -> None:
        self._ledger = ledger
        self._quota = quota
        self._spool = spool

    async def settle(self, admitted: Admitted, report: DispatchReport) -> None:
        """Record `report` for `admitted` exactly once; release the admission if no provider was reached."""
        if not report.attempts:
            await self.release(admitted)
            return
        record = usage_record(admitted, report)
        try:
            await self._ledger.settle(record)
        except REDIS_DOWN:
            # Never lose a billable record: keep it on local disk until Redis is back (replayed exactly once).
            log.warning("Redis unavailable: usage record %s spooled to disk", record.request_id)
            await self._spool.append(record)

    async def release(self, admitted: Admitted) -> None:
        """Give back the admission of a request that will not reach a provider."""
        if not admitted.in_redis:
            return
        try:
            await self._quota.release(admitted.principal, admitted.request_id)
        except REDIS_DOWN:
            log.warning("Redis unavailable: admission of %s expires on its own", admitted.request_id)


def usage_record(admitted: Admitted, report: DispatchReport) -> UsageRecord:
    """The usage record of one request (or of one late-reported provider job)."""
    request = report.request
    served = report.served
    usage = served.candidate.usage if served is not None else None
    request_id = request.request_id
    if report.late:  # a separate record, so the request's own record stays exactly-once
        request_id = f"{request_id}~late~{report.attempts[0].jobs[0] if report.attempts[0].jobs else 'job'}"
    attempts = [
        {
            "deployment": a.deployment_key,
            "outcome": a.outcome,
            "disposition": a.disposition,
            "cost_micros": a.cost_micros,
            "ms": round(a.elapsed_s * 1000, 1),
            "jobs": list(a.jobs),
        }
        for a in report.attempts
    ]
    return UsageRecord(
        request_id=request_id,
        ts_ms=int(time.time() * 1000),
        team=admitted.principal.team,
        key_id=admitted.principal.key_id,
        model=report.model_id,
        deployment=served.key if served is not None else "",
        mode=request.mode.value,
        n=request.n,
        width=request.width,
        height=request.height,
        output_megapixels=f"{float(usage.output_megapixels):.6f}" if usage else "0",
        input_megapixels=f"{float(usage.input_megapixels):.6f}" if usage else "0",
        billed_micros=report.billed_micros,
        provider_cost_micros=report.provider_cost_micros,
        attempts=len(report.attempts),
        attempts_json=orjson.dumps(attempts).decode(),
        latency_ms=round((time.perf_counter() - admitted.started) * 1000),
        outcome=report.outcome,
        reserved_micros=0 if report.late else admitted.reserved_micros,
        input_images=len(request.images),
    )
