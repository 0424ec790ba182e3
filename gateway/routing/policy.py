"""Order eligible candidates for one request: by policy, honouring health and the client's preferences.

Pure: inputs are the candidates (with this request's cost), each deployment's `DeploymentHealth` and the
time; output is a `RoutePlan` listing what to try, in order, and what was left out and why.

- `cost`: cheapest first.
- `latency`: fastest expected first, chosen by power of two choices (two random candidates, the faster
  wins) so many gateway instances reading the same estimates do not all herd onto one deployment.
- `balanced`: cost plus expected latency priced at `balance_micros_per_s`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.routing.candidates import Candidate
from gateway.routing.config import Policy, RoutingConfig
from gateway.routing.health import Admission, DeploymentHealth


@dataclass(frozen=True, slots=True)
class RoutePreferences:
    """A request's own routing wishes (OpenRouter-style `provider: {...}` in the body)."""

    order: tuple[str, ...] = ()  # deployment keys or provider names to try first, in this order
    allow_fallbacks: bool = True  # False: only what `order` names
    policy: Policy | None = None  # overrides the model's policy
    max_price_micros: int | None = None  # refuse deployments costing more for this request


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    """A candidate in the plan, with what the router knew when ranking it."""

    candidate: Candidate
    admission: Admission
    expected_latency_s: float | None  # None: no measurement yet (the prior was used for ranking)
    p95_latency_s: float | None

    @property
    def key(self) -> str:
        return self.candidate.deployment.key


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A candidate left out of the plan, and why (for dry runs, errors and logs)."""

    key: str
    reason: str  # "over_max_price" | "not_in_order" | "unhealthy"
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What to try, in order, under which policy; and what was excluded."""

    policy: Policy
    ranked: tuple[RankedCandidate, ...]
    excluded: tuple[Exclusion, ...]


def output_megapixels(candidate: Candidate) -> float:
    """Megapixels the deployment must produce (real pixels, not billing units): the latency scale."""
    return max(candidate.usage.output_pixels / 1_048_576, 1e-6)


class Router:
    """Turns candidates + health + preferences into a `RoutePlan`."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def plan(
        self,
        candidates: Sequence[Candidate],
        health: Mapping[str, DeploymentHealth],
        config: RoutingConfig,
        prefs: RoutePreferences,
        now: float,
    ) -> RoutePlan:
        policy = prefs.policy or config.policy
        excluded: list[Exclusion] = []
        usable: list[RankedCandidate] = []
        for candidate in candidates:
            key = candidate.deployment.key
            if prefs.max_price_micros is not None and candidate.usage.cost_micros > prefs.max_price_micros:
                excluded.append(Exclusion(key, "over_max_price"))
                continue
            if not prefs.allow_fallbacks and _order_index(candidate, prefs.order) is None:
                excluded.append(Exclusion(key, "not_in_order"))
                continue
            state = health.get(key) or DeploymentHealth(key)
            admission = state.admission(now)
            if admission is Admission.DENY:
                excluded.append(Exclusion(key, "unhealthy", state.retry_at))
                continue
            mp = output_megapixels(candidate)
            mean = state.latency_s_per_mp * mp if state.latency_s_per_mp is not None else None
            p95 = state.latency_p95_s_per_mp * mp if state.latency_p95_s_per_mp is not None else None
            usable.append(RankedCandidate(candidate, admission, mean, p95))

        ordered = self._order(usable, policy, config)
        pinned = sorted(
            (r for r in ordered if _order_index(r.candidate, prefs.order) is not None),
            key=lambda r: _order_index(r.candidate, prefs.order) or 0,
        )
        rest = [r for r in ordered if r not in pinned]
        return RoutePlan(policy, tuple(pinned + rest), tuple(excluded))

    def _order(self, usable: list[RankedCandidate], policy: Policy, config: RoutingConfig) -> list[RankedCandidate]:
        def latency(r: RankedCandidate) -> float:
            if r.expected_latency_s is not None:
                return r.expected_latency_s
            return config.latency_prior_s_per_mp * output_megapixels(r.candidate)

        def cost(r: RankedCandidate) -> int:
            return r.candidate.usage.cost_micros

        if policy is Policy.COST:
            return sorted(usable, key=lambda r: (cost(r), r.key))
        if policy is Policy.BALANCED:
            return sorted(usable, key=lambda r: (cost(r) + config.balance_micros_per_s * latency(r), r.key))
        by_latency = sorted(usable, key=lambda r: (latency(r), r.key))
        if len(by_latency) < 2:
            return by_latency
        # Power of two choices: the first try is the faster of two random candidates, not always the
        # fastest, so instances sharing estimates spread load instead of herding.
        a, b = self._rng.sample(by_latency, 2)
        first = a if (latency(a), a.key) <= (latency(b), b.key) else b
        return [first, *(r for r in by_latency if r is not first)]


def _order_index(candidate: Candidate, order: Sequence[str]) -> int | None:
    deployment = candidate.deployment
    for index, name in enumerate(order):
        if name in (deployment.key, deployment.provider):
            return index
    return None
