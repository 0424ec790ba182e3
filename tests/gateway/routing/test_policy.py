import random
from collections import Counter
from fractions import Fraction

from gateway.catalog import Deployment
from gateway.pricing import PricingRule, Usage
from gateway.routing.candidates import Candidate
from gateway.routing.config import Policy, RoutingConfig
from gateway.routing.health import Admission, BreakerState, DeploymentHealth
from gateway.routing.policy import RoutePreferences, Router
from gateway.sizes import FreeSizes
from gateway.types import Mode

MP = 1_048_576


def _candidate(key: str, cost: int) -> Candidate:
    provider = key.split("/")[0]
    deployment = Deployment(
        key,
        provider,
        "m",
        f"{provider}-model",
        frozenset({Mode.GENERATE}),
        FreeSizes(64, 2048),
        PricingRule(output_micros_per_mp=cost),
    )
    return Candidate(deployment, Usage(Fraction(1), Fraction(0), cost, output_pixels=MP))


CHEAP, FAST, MID = _candidate("cheap/m", 1000), _candidate("fast/m", 5000), _candidate("mid/m", 3000)
HEALTH = {
    "cheap/m": DeploymentHealth("cheap/m", latency_s_per_mp=8.0, latency_p95_s_per_mp=12.0, latency_samples=10),
    "fast/m": DeploymentHealth("fast/m", latency_s_per_mp=1.0, latency_p95_s_per_mp=1.5, latency_samples=10),
    "mid/m": DeploymentHealth("mid/m", latency_s_per_mp=3.0, latency_p95_s_per_mp=4.0, latency_samples=10),
}


def _plan(
    policy: Policy = Policy.COST, prefs: RoutePreferences | None = None, health=None, seed: int = 1, **config
) -> list[str]:
    plan = Router(random.Random(seed)).plan(
        [CHEAP, FAST, MID],
        HEALTH if health is None else health,
        RoutingConfig(policy=policy, **config),
        prefs or RoutePreferences(),
        100.0,
    )
    return [r.key for r in plan.ranked]


def test_cost_policy_is_cheapest_first() -> None:
    assert _plan(Policy.COST) == ["cheap/m", "mid/m", "fast/m"]


def test_latency_policy_uses_two_random_choices() -> None:
    firsts = Counter(_plan(Policy.LATENCY, seed=seed)[0] for seed in range(300))
    # The slowest can never win a pair; the fastest wins every pair it is in (2 of 3 pairs).
    assert set(firsts) == {"fast/m", "mid/m"}
    assert 150 < firsts["fast/m"] < 250


def test_latency_policy_orders_the_rest_fastest_first() -> None:
    plan = _plan(Policy.LATENCY, seed=3)
    assert plan[1:] == sorted(plan[1:], key=lambda k: HEALTH[k].latency_s_per_mp)


def test_unmeasured_deployments_use_the_prior() -> None:
    health = {k: DeploymentHealth(k) for k in HEALTH}
    assert _plan(Policy.BALANCED, health=health) == ["cheap/m", "mid/m", "fast/m"]


def test_balanced_weighs_cost_against_latency() -> None:
    # cheap: 1000 + 8 s * w; mid: 3000 + 3 s * w; fast: 5000 + 1 s * w.
    assert _plan(Policy.BALANCED, balance_micros_per_s=100) == ["cheap/m", "mid/m", "fast/m"]
    assert _plan(Policy.BALANCED, balance_micros_per_s=1000) == ["fast/m", "mid/m", "cheap/m"]


def test_request_policy_overrides_the_model() -> None:
    assert _plan(Policy.COST, RoutePreferences(policy=Policy.BALANCED), balance_micros_per_s=1000)[0] == "fast/m"


def test_order_goes_first_and_fallbacks_follow_policy() -> None:
    assert _plan(Policy.COST, RoutePreferences(order=("fast", "mid/m"))) == ["fast/m", "mid/m", "cheap/m"]


def test_no_fallbacks_keeps_only_the_named() -> None:
    plan = Router().plan(
        [CHEAP, FAST, MID], HEALTH, RoutingConfig(), RoutePreferences(order=("mid",), allow_fallbacks=False), 0.0
    )
    assert [r.key for r in plan.ranked] == ["mid/m"]
    assert {(e.key, e.reason) for e in plan.excluded} == {("cheap/m", "not_in_order"), ("fast/m", "not_in_order")}


def test_max_price_excludes_dearer_deployments() -> None:
    assert _plan(Policy.COST, RoutePreferences(max_price_micros=3000)) == ["cheap/m", "mid/m"]


def test_open_breakers_are_excluded_and_half_open_are_probes() -> None:
    health = dict(HEALTH)
    health["cheap/m"] = DeploymentHealth("cheap/m", state=BreakerState.OPEN, retry_at=200.0)
    health["mid/m"] = DeploymentHealth("mid/m", state=BreakerState.OPEN, retry_at=50.0)  # due: probe
    plan = Router().plan([CHEAP, FAST, MID], health, RoutingConfig(), RoutePreferences(), 100.0)
    assert [(r.key, r.admission) for r in plan.ranked] == [("mid/m", Admission.PROBE), ("fast/m", Admission.ALLOW)]
    assert [(e.key, e.reason, e.retry_at) for e in plan.excluded] == [("cheap/m", "unhealthy", 200.0)]


def test_rate_limit_cooldown_denies_until_it_passes() -> None:
    cooling = DeploymentHealth("cheap/m", retry_at=150.0)
    assert cooling.admission(100.0) is Admission.DENY
    assert cooling.admission(150.0) is Admission.ALLOW


def test_expected_latency_scales_with_megapixels() -> None:
    big = Candidate(CHEAP.deployment, Usage(Fraction(4), Fraction(0), 4000, output_pixels=4 * MP))
    plan = Router().plan([big], HEALTH, RoutingConfig(), RoutePreferences(), 0.0)
    assert plan.ranked[0].expected_latency_s == 32.0
    assert plan.ranked[0].p95_latency_s == 48.0
