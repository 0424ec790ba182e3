"""Dispatcher metering of abandoned attempts: scripted adapters, a real HealthStore on a real redis-server.

The end-to-end suites drive these paths through the simulators; here the timing of a cancel's answer
relative to the dispatch report is controlled exactly, which loopback HTTP cannot do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from fractions import Fraction

import pytest
from redis.asyncio import Redis

from gateway.catalog import Deployment
from gateway.dispatch import Dispatcher, DispatchReport
from gateway.exceptions import ProviderUnavailable
from gateway.health_store import HealthStore
from gateway.pricing import PricingRule, Usage
from gateway.redis_server import EmbeddedRedis
from gateway.routing.candidates import Candidate
from gateway.routing.config import Policy
from gateway.routing.health import Admission, BreakerPolicy
from gateway.routing.policy import RankedCandidate, RoutePlan
from gateway.routing.retry_budget import RetryBudget
from gateway.sizes import FreeSizes
from gateway.types import (
    CancelOutcome,
    ImageRequest,
    JobCancelled,
    JobStarted,
    JobSucceeded,
    Mode,
    ProviderJob,
    ProviderResult,
    Trace,
)
from providers.base import ProviderAdapter

COST = 4_000
JOB = ProviderJob("stub", "job-1")


class AnswersCancelLate(ProviderAdapter):
    """Starts one job and never finishes it; when cancelled, the provider's answer comes `delay_s` later.

    That is what `ProviderHTTP.start_job` does when a create was still in flight: the CancelledError
    propagates at once and JobCancelled follows from a background task.
    """

    name = "stub"

    def __init__(
        self, outcome: CancelOutcome, delay_s: float | None, *, succeeds: bool = False, then: Exception | None = None
    ) -> None:
        self.outcome, self.delay_s = outcome, delay_s
        self.succeeds, self.then = succeeds, then  # the job produces its output; then the attempt fails

    async def generate(
        self,
        deployment: Deployment,
        request: ImageRequest,
        *,
        trace: Trace | None = None,
        deadline: float | None = None,
    ) -> ProviderResult:
        assert trace is not None
        trace(JobStarted(JOB))
        if self.succeeds:
            trace(JobSucceeded(JOB))
        if self.then is not None:
            raise self.then
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.delay_s is None:
                trace(JobCancelled(JOB, self.outcome))
            else:
                asyncio.get_running_loop().call_later(self.delay_s, trace, JobCancelled(JOB, self.outcome))
            raise
        raise AssertionError("unreachable")

    async def cancel(self, job: ProviderJob) -> CancelOutcome:
        return self.outcome

    async def aclose(self) -> None:
        return None


class Reports:
    """The `report` callback: collects reports, optionally taking `write_s` to "write" each one."""

    def __init__(self, write_s: float = 0.0) -> None:
        self.write_s = write_s
        self.items: list[DispatchReport] = []

    async def __call__(self, report: DispatchReport) -> None:
        await asyncio.sleep(self.write_s)
        self.items.append(report)

    def attempts(self) -> list[tuple[str, str, int, bool]]:
        return [(a.outcome, a.disposition, a.cost_micros, r.late) for r in self.items for a in r.attempts]


@pytest.fixture
async def health(redis_server: EmbeddedRedis) -> AsyncIterator[HealthStore]:
    redis = Redis.from_url(redis_server.url)
    await redis.flushdb()
    yield HealthStore(redis, BreakerPolicy(), cache_ttl_s=0)
    await redis.aclose()


def _plan() -> RoutePlan:
    deployment = Deployment(
        "stub/m", "stub", "m", "stub-model", frozenset({Mode.GENERATE}), FreeSizes(64, 2048), PricingRule(COST)
    )
    candidate = Candidate(deployment, Usage(Fraction(1), Fraction(0), COST, output_pixels=1_048_576))
    return RoutePlan(Policy.COST, (RankedCandidate(candidate, Admission.ALLOW, None, None),), ())


async def _dispatch_until_the_client_leaves(health: HealthStore, adapter: ProviderAdapter, reports: Reports) -> None:
    """Dispatch, then cancel the dispatch as a disconnecting client does: the attempt is abandoned."""
    dispatcher = Dispatcher({"stub": adapter}, health, RetryBudget())
    request = ImageRequest("req-1", Mode.GENERATE, "a fox", 1024, 1024)
    deadline = asyncio.get_running_loop().time() + 30
    task = asyncio.create_task(dispatcher.dispatch(request, _plan(), deadline, report=reports))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _settled() -> None:
    """Long enough for every late answer (0.05 s after the cancel) to be reported, however slowly."""
    await asyncio.sleep(0.5)


async def test_a_cancel_confirmed_after_the_report_costs_nothing(health: HealthStore) -> None:
    reports = Reports()
    await _dispatch_until_the_client_leaves(health, AnswersCancelLate(CancelOutcome.CANCELLED, 0.05), reports)
    await _settled()
    assert reports.attempts() == [("cancelled", "cancelled", 0, False)]


@pytest.mark.parametrize("outcome", [CancelOutcome.FAILED, CancelOutcome.ALREADY_FINISHED])
async def test_a_job_that_may_bill_after_the_report_is_metered_once_late(
    health: HealthStore, outcome: CancelOutcome
) -> None:
    reports = Reports()
    await _dispatch_until_the_client_leaves(health, AnswersCancelLate(outcome, 0.05), reports)
    await _settled()
    assert reports.attempts() == [("cancelled", "cancelled", 0, False), ("late_cancel", "wasted", COST, True)]


async def test_a_cancel_answered_while_the_report_is_written_is_not_lost(health: HealthStore) -> None:
    reports = Reports(write_s=0.2)  # the answer (after 0.05 s) lands while the first report is being written
    await _dispatch_until_the_client_leaves(health, AnswersCancelLate(CancelOutcome.FAILED, 0.05), reports)
    await _settled()
    assert sorted(reports.attempts()) == [("cancelled", "cancelled", 0, False), ("late_cancel", "wasted", COST, True)]


async def test_a_cancel_that_failed_in_time_is_unconfirmed_spend(health: HealthStore) -> None:
    reports = Reports()
    await _dispatch_until_the_client_leaves(health, AnswersCancelLate(CancelOutcome.FAILED, None), reports)
    await _settled()
    assert reports.attempts() == [("cancelled", "unconfirmed", COST, False)]


async def test_a_job_that_produced_output_before_its_attempt_failed_is_wasted_spend(health: HealthStore) -> None:
    reports = Reports()
    fetch_failed = ProviderUnavailable("the result fetch failed", provider="stub")
    adapter = AnswersCancelLate(CancelOutcome.CANCELLED, None, succeeds=True, then=fetch_failed)
    dispatcher = Dispatcher({"stub": adapter}, health, RetryBudget())
    request = ImageRequest("req-1", Mode.GENERATE, "a fox", 1024, 1024)
    with pytest.raises(ProviderUnavailable):
        await dispatcher.dispatch(request, _plan(), asyncio.get_running_loop().time() + 30, report=reports)
    await _settled()
    assert reports.attempts() == [("provider_unavailable", "wasted", COST, False)]


async def test_a_finished_job_is_billed_once_whatever_its_late_cancel_says(health: HealthStore) -> None:
    reports = Reports()
    adapter = AnswersCancelLate(CancelOutcome.FAILED, 0.05, succeeds=True)
    await _dispatch_until_the_client_leaves(health, adapter, reports)
    await _settled()
    assert reports.attempts() == [("cancelled", "wasted", COST, False)]
