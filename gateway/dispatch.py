"""Execute a route plan: attempts in order within one deadline, failover, hedging, and nothing orphaned.

- Each attempt gets a share of the time left (`remaining / candidates left`; the last gets all of it), so
  a provider stuck in its queue is abandoned while the next one still has time.
- A retryable failure moves on to the next candidate, if the retry budget allows; invalid input, content
  refusals and auth failures stop at once (auth also ejects the deployment).
- Hedging starts the next candidate when the first is slow; the first success wins.
- Every abandoned attempt is cancelled at the provider (cancelling the task reaches the adapter), and
  every attempt is metered once: served, wasted (the provider finished it anyway), failed or cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field

from gateway.exceptions import (
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    NoHealthyDeployment,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    RetryableProviderError,
)
from gateway.health_store import HealthStore
from gateway.routing.config import HedgeConfig
from gateway.routing.health import Admission, AttemptOutcome
from gateway.routing.policy import RankedCandidate, RoutePlan, output_megapixels
from gateway.routing.retry_budget import RetryBudget
from gateway.types import (
    CancelOutcome,
    ImageRequest,
    JobStarted,
    JobSucceeded,
    ProviderJob,
    ProviderResult,
    TraceEvent,
)
from providers.base import ProviderAdapter

log = logging.getLogger("gateway.dispatch")

MIN_ATTEMPT_S = 0.05  # less time than this left: starting another attempt is pointless
CANCEL_GRACE_S = 3.0  # how long to wait for abandoned attempts to finish cancelling upstream


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one deployment and how it ended (`ok` or an error code), for headers and logs."""

    deployment_key: str
    outcome: str
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Served:
    """A successful dispatch: the winning candidate, its result, and every attempt made."""

    ranked: RankedCandidate
    result: ProviderResult
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """One attempt as metering sees it: what it was, how it ended, what the provider may bill for it."""

    deployment_key: str
    outcome: str
    disposition: str  # served | wasted | failed | cancelled | unconfirmed
    cost_micros: int
    elapsed_s: float
    jobs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """Everything one dispatch did, handed to the `report` callback exactly once (and again, `late`, only
    for a provider job whose cancel outcome arrived after that)."""

    request: ImageRequest
    model_id: str
    attempts: tuple[AttemptReport, ...]
    served: RankedCandidate | None
    outcome: str  # "ok", or the error code the client gets ("cancelled" when the client went away)
    late: bool = False

    @property
    def billed_micros(self) -> int:
        """What the team pays: the served attempt's cost."""
        return sum(a.cost_micros for a in self.attempts if a.disposition == "served")

    @property
    def provider_cost_micros(self) -> int:
        """What the providers may bill: every attempt's cost, served or not."""
        return sum(a.cost_micros for a in self.attempts)


Report = Callable[[DispatchReport], Awaitable[None]]


@dataclass(eq=False)
class _Run:
    """The mutable record of one attempt while it runs; its trace callback collects provider jobs."""

    ranked: RankedCandidate
    started: float
    probe: bool
    holds_retry: bool
    outcome: str = "pending"
    elapsed_s: float = 0.0
    completed: bool = False  # the provider delivered a result (even if another attempt won)
    jobs: dict[str, ProviderJob] = field(default_factory=dict)
    succeeded: set[str] = field(default_factory=set)  # jobs that produced output: billed whatever happens next
    cancels: dict[str, CancelOutcome] = field(default_factory=dict)
    # Set when the attempt is reported: the jobs that report already paid for. A job that turns out
    # billable later (its cancel answer or success arrives after the report) goes to `on_late`, once.
    metered_jobs: set[str] | None = None
    on_late: Callable[[ProviderJob], None] | None = None

    def trace(self, event: TraceEvent) -> None:
        job_id = event.job.job_id
        if isinstance(event, JobStarted):
            self.jobs[job_id] = event.job
            return
        if isinstance(event, JobSucceeded):
            self.succeeded.add(job_id)
        else:
            self.cancels[job_id] = event.outcome
        if self.metered_jobs is not None and job_id not in self.metered_jobs and job_id in self.billable_jobs():
            self.metered_jobs.add(job_id)
            if self.on_late is not None:
                self.on_late(event.job)

    def finished_jobs(self) -> set[str]:
        """Jobs the provider finished (so bills): it said so, or answered our cancel with "already finished"."""
        return self.succeeded | {j for j, o in self.cancels.items() if o is CancelOutcome.ALREADY_FINISHED}

    def billable_jobs(self) -> set[str]:
        """Finished jobs, plus those whose cancel failed: they may still run and bill."""
        return self.finished_jobs() | {j for j, o in self.cancels.items() if o is CancelOutcome.FAILED}

    def finish(self, outcome: str, now: float) -> None:
        self.outcome = outcome
        self.elapsed_s = now - self.started

    def public(self) -> Attempt:
        return Attempt(self.ranked.key, self.outcome, self.elapsed_s)


@dataclass(eq=False)
class _State:
    """One dispatch's progress."""

    queue: deque[RankedCandidate]
    model_id: str
    running: dict[asyncio.Task[ProviderResult], _Run] = field(default_factory=dict)
    runs: list[_Run] = field(default_factory=list)
    errors: list[GatewayError] = field(default_factory=list)
    winner: _Run | None = None
    result: ProviderResult | None = None
    hedged: bool = False
    budget_exhausted: bool = False


class Dispatcher:
    """Runs a `RoutePlan` against the provider adapters; see the module docstring for the rules."""

    def __init__(self, adapters: Mapping[str, ProviderAdapter], health: HealthStore, budget: RetryBudget) -> None:
        self._adapters = adapters
        self._health = health
        self._budget = budget
        self._background: set[asyncio.Task[None]] = set()

    async def dispatch(
        self,
        request: ImageRequest,
        plan: RoutePlan,
        deadline: float,
        hedge: HedgeConfig | None = None,
        *,
        report: Report | None = None,
    ) -> Served:
        """Serve `request` following `plan`; `deadline` is in event-loop time.

        `report` receives the `DispatchReport` once every attempt is over, however dispatch ends
        (success, error, or the caller's cancellation): the one place usage is metered from.
        """
        if not plan.ranked:
            raise nothing_to_try(plan)
        state = _State(deque(plan.ranked), plan.ranked[0].candidate.deployment.model_id)
        outcome = "cancelled"  # unless we leave by a result or an error
        with self._budget.request():
            try:
                await self._run_plan(state, request, deadline, hedge)
                await self._abandon(state.running, asyncio.get_running_loop().time())
                if state.winner is not None and state.result is not None:
                    outcome = "ok"
                    return Served(state.winner.ranked, state.result, tuple(r.public() for r in state.runs))
                out_of_time = asyncio.get_running_loop().time() >= deadline - MIN_ATTEMPT_S
                raise _final_error(state.errors, state.runs, out_of_time, state.budget_exhausted)
            except GatewayError as exc:
                outcome = exc.code or "error"
                raise
            finally:
                await self._abandon(state.running, asyncio.get_running_loop().time())
                for run in state.runs:
                    if run.holds_retry:
                        self._budget.release_retry()
                if report is not None:
                    await asyncio.shield(self._report(report, request, state, outcome))

    async def _run_plan(self, state: _State, request: ImageRequest, deadline: float, hedge: HedgeConfig | None) -> None:
        """Start, hedge and settle attempts until one wins, the plan runs out, or time does."""
        loop = asyncio.get_running_loop()
        while True:
            if not state.running:
                started = await self._start_next(state, request, deadline)
                if started is None:
                    return
                if not started:
                    state.budget_exhausted = True
                    return
            hedge_at = None if state.hedged else self._hedge_time(hedge, state, loop.time())
            wake = min(deadline, hedge_at) if hedge_at is not None else deadline
            done, _ = await asyncio.wait(
                state.running, timeout=max(0.0, wake - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                if loop.time() >= deadline:
                    return
                state.hedged = True  # at most one hedge per request, started or refused
                await self._start_next(state, request, deadline, hedging=True)
                continue
            for task in done:
                run = state.running.pop(task)
                result = await self._settle(run, task, state.errors, loop.time())
                if result is not None:
                    state.winner, state.result = run, result
                    return

    async def _start_next(
        self, state: _State, request: ImageRequest, deadline: float, *, hedging: bool = False
    ) -> bool | None:
        """Start the next admissible candidate. None: none left (or no time); False: retry budget spent."""
        loop = asyncio.get_running_loop()
        queue, running, runs = state.queue, state.running, state.runs
        while queue:
            remaining = deadline - loop.time()
            if remaining < MIN_ATTEMPT_S:
                return None
            ranked = queue.popleft()
            probe = ranked.admission is Admission.PROBE
            if probe and not await self._health.acquire_probe(ranked.key):
                continue  # half-open and its probe slots are taken: leave it to the probes in flight
            retry = bool(runs)
            if retry and not self._budget.try_retry():
                if probe:
                    await self._health.release_probe(ranked.key)
                return False
            # A share of the time left, so a stuck provider is abandoned while the next still has time.
            share = remaining if hedging else remaining / (1 + len(queue))
            run = _Run(ranked, loop.time(), probe, retry)
            task = asyncio.create_task(self._attempt(run, request, loop.time() + share))
            running[task] = run
            runs.append(run)
            return True
        return None

    async def _attempt(self, run: _Run, request: ImageRequest, attempt_deadline: float) -> ProviderResult:
        deployment = run.ranked.candidate.deployment
        adapter = self._adapters[deployment.provider]
        try:
            async with asyncio.timeout_at(attempt_deadline):
                result = await adapter.generate(deployment, request, trace=run.trace, deadline=attempt_deadline)
        except TimeoutError:
            share = attempt_deadline - run.started
            raise ProviderTimeout(
                f"{deployment.key} gave no result within its {share:.1f} s share of the deadline",
                provider=deployment.provider,
            ) from None
        run.completed = True
        _check_result(request, result, deployment.provider)
        return result

    async def _settle(
        self, run: _Run, task: asyncio.Task[ProviderResult], errors: list[GatewayError], now: float
    ) -> ProviderResult | None:
        """Record a finished attempt's outcome; return its result on success, raise if dispatch must stop."""
        key = run.ranked.key
        try:
            result = task.result()
        except RetryableProviderError as exc:
            run.finish(exc.code or "error", now)
            errors.append(exc)
            limited = isinstance(exc, ProviderRateLimited)
            outcome = AttemptOutcome.RATE_LIMITED if limited else AttemptOutcome.FAILURE
            await self._health.record(key, outcome, retry_after_s=exc.retry_after, probe=run.probe)
            log.warning("attempt at %s failed (%s), failing over: %s", key, exc.code, exc.message)
            return None
        except ProviderAuthError as exc:
            run.finish(exc.code or "error", now)
            await self._health.record(key, AttemptOutcome.AUTH_FAILURE, probe=run.probe)
            raise
        except GatewayError as exc:
            # The provider judged the input (refused it, or its content): it is healthy, and another
            # provider would judge the same input the same way, so there is no failover.
            run.finish(exc.code or "error", now)
            await self._health.record(key, AttemptOutcome.SUCCESS, probe=run.probe)
            raise
        run.finish("ok", now)
        mp = output_megapixels(run.ranked.candidate)
        # Off the response path: a success changes no decision this request still has to make, and the
        # record lands a Redis round trip later (failures above are recorded before failing over).
        self._spawn(
            self._health.record(key, AttemptOutcome.SUCCESS, elapsed_s=run.elapsed_s, megapixels=mp, probe=run.probe)
        )
        return result

    @staticmethod
    def _hedge_time(hedge: HedgeConfig | None, state: _State, now: float) -> float | None:
        """When to start a hedge: only with one attempt in flight and another candidate waiting."""
        if hedge is None or not hedge.enabled or len(state.running) != 1 or not state.queue:
            return None
        (run,) = state.running.values()
        delay = hedge.delay_s if hedge.delay_s is not None else run.ranked.p95_latency_s
        if delay is None:
            return None  # no p95 measured yet: nothing to base a hedge on
        return max(now, run.started + delay)

    async def _abandon(self, running: dict[asyncio.Task[ProviderResult], _Run], now: float) -> None:
        """Cancel attempts still in flight; their adapters cancel the provider jobs before finishing."""
        if not running:
            return
        for task, run in running.items():
            task.cancel()
            run.finish("cancelled", now)
        # Shielded and bounded: a client that went away must not stop us from cleaning up upstream.
        await asyncio.shield(asyncio.wait(set(running), timeout=CANCEL_GRACE_S))
        for task, run in running.items():
            if task.done() and not task.cancelled() and task.exception() is None:
                run.completed = True  # it delivered just as we gave up on it: the provider bills it
        running.clear()

    async def _report(self, report: Report, request: ImageRequest, state: _State, outcome: str) -> None:
        attempts = tuple(_attempt_report(run, state.winner) for run in state.runs)
        # From here on a job found billable is reported on its own: armed before the await below, so an
        # answer that lands while the report is being written is neither lost nor counted twice.
        for run in state.runs:
            whole = run is state.winner or run.completed
            run.metered_jobs = set(run.jobs) if whole else run.billable_jobs()
            run.on_late = lambda job, run=run: self._spawn(self._report_late(report, request, run, job))
        served = state.winner.ranked if state.winner is not None and outcome == "ok" else None
        await report(DispatchReport(request, state.model_id, attempts, served, outcome))

    @staticmethod
    async def _report_late(report: Report, request: ImageRequest, run: _Run, job: ProviderJob) -> None:
        """A job found billable after its dispatch was reported (a create, cancel or success came late)."""
        cost = math.ceil(run.ranked.candidate.usage.cost_micros / max(len(run.jobs), 1))
        late = AttemptReport(run.ranked.key, "late_cancel", "wasted", cost, 0.0, (job.job_id,))
        model_id = run.ranked.candidate.deployment.model_id
        await report(DispatchReport(request, model_id, (late,), None, "late_cancel", late=True))

    async def drain(self, timeout_s: float = CANCEL_GRACE_S) -> None:
        """Wait, bounded, for background work (health records, late usage reports): call before shutdown."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _attempt_report(run: _Run, winner: _Run | None) -> AttemptReport:
    """What the provider may bill for one attempt, and whether the team got it.

    Counted per provider job: one the provider finished anyway is wasted spend, one whose cancel failed
    may still bill (unconfirmed). A job whose cancel is still in flight counts nothing here; its answer
    arrives later and `Dispatcher._report_late` meters it if it billed.
    """
    cost = run.ranked.candidate.usage.cost_micros
    if run is winner:
        return AttemptReport(run.ranked.key, run.outcome, "served", cost, run.elapsed_s, tuple(run.jobs))
    if run.completed:  # it delivered, but another attempt was served
        return AttemptReport(run.ranked.key, run.outcome, "wasted", cost, run.elapsed_s, tuple(run.jobs))
    finished, billable = run.finished_jobs(), run.billable_jobs()
    if finished:
        disposition = "wasted"
    elif billable:
        disposition = "unconfirmed"
    else:
        disposition = "cancelled" if run.outcome == "cancelled" else "failed"
    spent = math.ceil(cost * len(billable) / max(len(run.jobs), 1))
    return AttemptReport(run.ranked.key, run.outcome, disposition, spent, run.elapsed_s, tuple(run.jobs))


def nothing_to_try(plan: RoutePlan) -> GatewayError:
    reasons = {e.reason for e in plan.excluded}
    if reasons == {"over_max_price"}:
        return InvalidRequest(
            "No deployment can serve this request within 'provider.max_price'; raise it or ask for a smaller image.",
            param="provider.max_price",
        )
    if "unhealthy" in reasons:
        retry_at = [e.retry_at for e in plan.excluded if e.retry_at]
        return NoHealthyDeployment(
            "Every provider that can serve this request is unhealthy right now; retry shortly.",
            retry_after=max(1.0, min(retry_at) - time.time()) if retry_at else None,
        )
    return InvalidRequest(
        "No deployment matches 'provider.order' and fallbacks are off; name a provider that serves this model.",
        param="provider.order",
    )


def _final_error(
    errors: list[GatewayError], runs: list[_Run], out_of_time: bool, budget_exhausted: bool
) -> GatewayError:
    tried = ", ".join(f"{r.ranked.key}: {r.outcome}" for r in runs)
    if out_of_time and (not errors or isinstance(errors[-1], ProviderTimeout)):
        return DeadlineExceeded(
            f"No image arrived before the request deadline ({tried or 'no attempt started'}); the provider jobs "
            "were cancelled. Retry, or allow more time with the x-gateway-timeout header."
        )
    if not errors:
        return NoHealthyDeployment("No provider could take this request now (half-open breakers are probing); retry.")
    last = errors[-1]
    suffix = " The retry budget is spent, so the gateway did not fail over further." if budget_exhausted else ""
    message = f"All providers failed ({tried}). Last error: {last.message}{suffix}"
    if isinstance(last, ProviderRateLimited):
        return ProviderRateLimited(message, retry_after=last.retry_after)
    if isinstance(last, ProviderTimeout):
        return ProviderTimeout(message)
    if isinstance(last, ProviderError):
        return ProviderUnavailable(message)
    return last


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
