"""Routing, health and failover over real HTTP, real Redis and the simulators' fault knobs.

Each test asserts on what the client received, what the simulators saw (calls, cancels) and what usage
recorded. Replicate is the cheaper provider for 1024x1024, so the cost policy tries it first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.redis_server import free_port
from tests.e2e.conftest import Gateway, Simulators, UsageLog, catalog_with

REPLICATE = "replicate/flux.2-klein-4b"
FAL = "fal/flux.2-klein-4b"
BODY = {"model": "flux.2-klein-4b", "prompt": "a lighthouse", "size": "1024x1024"}


def _post(
    gateway: Gateway,
    body: dict[str, Any] | None = None,
    *,
    timeout_s: float | None = None,
    query: str = "",
    client_timeout: float = 30,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gateway.key}"}
    if timeout_s is not None:
        headers["x-gateway-timeout"] = str(timeout_s)
    return httpx.post(
        f"{gateway.url}/v1/images/generations{query}", headers=headers, json=body or BODY, timeout=client_timeout
    )


def _providers(gateway: Gateway) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{gateway.url}/v1/providers", headers={"Authorization": f"Bearer {gateway.key}"})
    response.raise_for_status()
    return {d["key"]: d for d in response.json()["data"]}


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def fast_breaker_gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    """Breaker opens after 3 failures in a row, half-opens after 1 s, closes after 1 probe success."""
    return start_gateway(
        GATEWAY_BREAKER_CONSECUTIVE_FAILURES="3",
        GATEWAY_BREAKER_OPEN_S="1",
        GATEWAY_BREAKER_SUCCESSES_TO_CLOSE="1",
        GATEWAY_REQUEST_TIMEOUT_S="6",
    )


def test_cost_policy_picks_replicate_when_healthy(gateway: Gateway, sims: Simulators, usage: UsageLog) -> None:
    response = _post(gateway)
    assert response.status_code == 200
    assert response.headers["x-gateway-provider"] == REPLICATE
    assert response.headers["x-gateway-route"] == "cost"
    assert response.headers["x-gateway-attempts"] == f"{REPLICATE}=ok"
    assert sims.fal.calls() == 0
    assert [(r["deployment"], r["disposition"]) for r in usage.since_mark()] == [(REPLICATE, "served")]


def test_dry_run_prices_every_candidate_without_calling_anyone(
    gateway: Gateway, sims: Simulators, usage: UsageLog
) -> None:
    response = _post(gateway, {**BODY, "n": 2}, query="?dry_run=true")
    assert response.status_code == 200
    body = response.json()
    assert body["dry_run"] is True
    assert body["policy"] == "cost"
    assert body["chosen"] == REPLICATE
    assert [(c["deployment"], c["cost_micros"]) for c in body["candidates"]] == [(REPLICATE, 2000), (FAL, 10000)]
    assert body["candidates"][1]["cost_usd"] == "0.010000"
    assert sims.total_calls() == 0
    assert usage.since_mark() == []


@pytest.mark.parametrize(
    ("kind", "op", "outcome"),
    [
        ("http_500", "create", "provider_unavailable"),
        ("http_429", "create", "provider_rate_limited"),
        ("malformed", "create", "provider_unavailable"),
        ("model_error", "create", "provider_unavailable"),
    ],
)
def test_failover_to_the_second_provider(
    gateway: Gateway, sims: Simulators, usage: UsageLog, kind: str, op: str, outcome: str
) -> None:
    sims.replicate.fault(kind, on=op, times=1, retry_after=2)
    started = time.monotonic()
    response = _post(gateway, timeout_s=10)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 3.0
    assert response.headers["x-gateway-provider"] == FAL
    assert response.headers["x-gateway-attempts"] == f"{REPLICATE}={outcome}, {FAL}=ok"
    records = usage.since_mark()
    assert [(r["deployment"], r["disposition"], r["cost_micros"]) for r in records] == [
        (REPLICATE, "failed", "0"),
        (FAL, "served", "5000"),
    ]
    assert sims.fal.stats()["calls"]["submit"] == 1


def test_failover_after_a_hang_within_the_deadline(gateway: Gateway, sims: Simulators, usage: UsageLog) -> None:
    sims.fal.configure(run_ms=10_000)  # fal's job is still running when we give up on it
    sims.fal.fault("hang", on="status", times=None)  # and its status never answers
    started = time.monotonic()
    response = _post(gateway, {**BODY, "provider": {"order": ["fal", "replicate"]}}, timeout_s=3)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-provider"] == REPLICATE
    assert response.headers["x-gateway-attempts"] == f"{FAL}=provider_timeout, {REPLICATE}=ok"
    assert 1.4 < elapsed < 3.0  # fal had half the deadline, then Replicate answered
    assert _wait_for(lambda: sims.fal.stats()["cancels"] == 1), "the abandoned fal job must be cancelled"
    records = [(r["deployment"], r["disposition"], r["cost_micros"]) for r in usage.since_mark()]
    assert records == [(FAL, "failed", "0"), (REPLICATE, "served", "1000")]


def test_a_job_that_finished_after_we_gave_up_is_wasted_not_delivered(
    gateway: Gateway, sims: Simulators, usage: UsageLog
) -> None:
    sims.fal.configure(run_ms=20)  # fal finishes at once, but we never hear of it: status polls hang
    sims.fal.fault("hang", on="status", times=None)
    response = _post(gateway, {**BODY, "provider": {"order": ["fal", "replicate"]}}, timeout_s=2)
    assert response.headers["x-gateway-provider"] == REPLICATE
    assert sims.fal.stats()["calls"].get("result", 0) == 0, "the finished fal job is never fetched or delivered"
    records = [(r["deployment"], r["disposition"], r["cost_micros"]) for r in usage.since_mark()]
    # fal bills its finished job (true provider spend); only Replicate's image is served to the team.
    assert records == [(FAL, "wasted", "5000"), (REPLICATE, "served", "1000")]


def test_stuck_in_queue_fails_over_and_cancels(gateway: Gateway, sims: Simulators) -> None:
    sims.replicate.fault("stuck", on="create", times=1)
    response = _post(gateway, timeout_s=2)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-attempts"] == f"{REPLICATE}=provider_timeout, {FAL}=ok"
    assert _wait_for(lambda: sims.replicate.stats()["cancels"] == 1)


@pytest.mark.parametrize(
    ("kind", "code"), [("validation", "provider_rejected_input"), ("nsfw", "content_policy_violation")]
)
def test_client_side_refusals_do_not_fail_over(
    gateway: Gateway, sims: Simulators, usage: UsageLog, kind: str, code: str
) -> None:
    sims.replicate.fault(kind, on="create", times=1)
    response = _post(gateway)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert sims.fal.calls() == 0, "another provider would refuse the same input: no failover"
    assert _providers(gateway)[REPLICATE]["health"]["consecutive_failures"] == 0


def test_breaker_opens_probes_and_closes(fast_breaker_gateway: Gateway, sims: Simulators) -> None:
    gateway = fast_breaker_gateway
    sims.replicate.fault("http_500", on="create", times=3)
    for _ in range(3):
        response = _post(gateway)
        assert response.headers["x-gateway-provider"] == FAL  # each one failed over
    health = _providers(gateway)[REPLICATE]["health"]
    assert health["state"] == "open"
    assert health["admission"] == "deny"

    creates = sims.replicate.stats()["calls"]["create"]
    response = _post(gateway)
    assert response.headers["x-gateway-attempts"] == f"{FAL}=ok", "an open breaker is skipped"
    assert sims.replicate.stats()["calls"]["create"] == creates

    time.sleep(1.1)  # the open period passes: the next request probes Replicate
    assert _providers(gateway)[REPLICATE]["health"]["admission"] == "probe"
    response = _post(gateway)
    assert response.headers["x-gateway-provider"] == REPLICATE
    assert _providers(gateway)[REPLICATE]["health"]["state"] == "closed"


def test_a_failed_probe_reopens_the_breaker(fast_breaker_gateway: Gateway, sims: Simulators) -> None:
    gateway = fast_breaker_gateway
    sims.replicate.fault("http_500", on="create", times=4)
    for _ in range(3):
        _post(gateway)
    time.sleep(1.1)
    response = _post(gateway)  # the probe fails, and the request still succeeds on fal
    assert response.headers["x-gateway-attempts"] == f"{REPLICATE}=provider_unavailable, {FAL}=ok"
    assert _providers(gateway)[REPLICATE]["health"]["state"] == "open"


def test_two_instances_share_one_breaker(
    fast_breaker_gateway: Gateway, start_gateway: Callable[..., Gateway], sims: Simulators
) -> None:
    other = start_gateway(**{k: v for k, v in fast_breaker_gateway.env.items() if k.startswith("GATEWAY_BREAKER")})
    sims.replicate.fault("http_500", on="create", times=3)
    for _ in range(3):
        _post(fast_breaker_gateway)
    creates = sims.replicate.stats()["calls"]["create"]
    response = _post(other)
    assert response.headers["x-gateway-attempts"] == f"{FAL}=ok", "the other instance honours the open breaker"
    assert sims.replicate.stats()["calls"]["create"] == creates
    assert _providers(other)[REPLICATE]["health"]["state"] == "open"


def test_rate_limit_retry_after_is_a_shared_cooldown(gateway: Gateway, sims: Simulators) -> None:
    sims.replicate.fault("http_429", on="create", times=1, retry_after=2)
    assert _post(gateway).headers["x-gateway-provider"] == FAL
    assert _providers(gateway)[REPLICATE]["health"]["admission"] == "deny"
    assert _post(gateway).headers["x-gateway-attempts"] == f"{FAL}=ok", "Replicate is cooling down"
    time.sleep(2.1)
    assert _post(gateway).headers["x-gateway-provider"] == REPLICATE


def test_latency_policy_follows_the_faster_provider(gateway: Gateway, sims: Simulators) -> None:
    latency = {**BODY, "provider": {"sort": "latency"}}
    sims.replicate.configure(queue_ms=0, run_ms=20)
    sims.fal.configure(queue_ms=0, run_ms=400)
    for pinned in (REPLICATE, FAL):  # teach the fleet one sample of each
        assert _post(gateway, {**BODY, "model": pinned}).status_code == 200
    response = _post(gateway, latency)
    assert response.headers["x-gateway-route"] == "latency"
    assert response.headers["x-gateway-provider"] == REPLICATE

    sims.replicate.configure(run_ms=900)
    sims.fal.configure(run_ms=20)
    served = [_post(gateway, latency).headers["x-gateway-provider"] for _ in range(8)]
    assert served[-1] == FAL, f"the router never moved to the now-faster provider: {served}"
    assert served.index(FAL) <= 6


def test_every_provider_down_is_one_clean_error_quickly(gateway: Gateway, sims: Simulators, usage: UsageLog) -> None:
    sims.replicate.fault("http_500", on="create", times=None)
    sims.fal.fault("http_500", on="submit", times=None)
    started = time.monotonic()
    response = _post(gateway)
    assert time.monotonic() - started < 1.0
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "provider_unavailable"
    assert REPLICATE in error["message"] and FAL in error["message"]
    assert [r["disposition"] for r in usage.since_mark()] == ["failed", "failed"]


def test_all_breakers_open_is_a_503_with_retry_after(fast_breaker_gateway: Gateway, sims: Simulators) -> None:
    sims.replicate.fault("http_500", on="create", times=None)
    sims.fal.fault("http_500", on="submit", times=None)
    for _ in range(3):
        _post(fast_breaker_gateway)
    calls = sims.total_calls()
    response = _post(fast_breaker_gateway)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_deployment"
    assert int(response.headers["retry-after"]) >= 1
    assert sims.total_calls() == calls, "no provider is called while every breaker is open"


def test_deadline_is_never_exceeded(gateway: Gateway, sims: Simulators, usage: UsageLog) -> None:
    sims.replicate.fault("stuck", on="create", times=None)
    sims.fal.fault("stuck", on="submit", times=None)
    started = time.monotonic()
    response = _post(gateway, timeout_s=1.5)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert elapsed < 1.5 + 0.5
    assert _wait_for(lambda: sims.replicate.stats()["cancels"] == 1 and sims.fal.stats()["cancels"] == 1)
    records = usage.since_mark()
    assert all(r["cost_micros"] == "0" for r in records), records


def test_client_disconnect_cancels_the_provider_job(gateway: Gateway, sims: Simulators, usage: UsageLog) -> None:
    sims.fal.fault("stuck", on="submit", times=1)
    with pytest.raises(httpx.ReadTimeout):
        _post(gateway, {**BODY, "model": FAL}, client_timeout=0.5)
    assert _wait_for(lambda: sims.fal.stats()["cancels"] == 1), "the client left: the fal job must be cancelled"
    assert _wait_for(lambda: [r["disposition"] for r in usage.since_mark()] == ["cancelled"])


def test_hedge_starts_a_second_provider_and_cancels_the_loser(
    start_gateway: Callable[..., Gateway], sims: Simulators, usage: UsageLog, tmp_path: Path
) -> None:
    gateway = start_gateway(GATEWAY_CATALOG_PATH=catalog_with(tmp_path, hedge={"enabled": True, "delay_s": 0.2}))
    sims.fal.configure(queue_ms=0, run_ms=3000)
    sims.replicate.configure(queue_ms=0, run_ms=20)
    started = time.monotonic()
    response = _post(gateway, {**BODY, "provider": {"order": ["fal", "replicate"]}})
    assert response.status_code == 200
    assert time.monotonic() - started < 1.5, "the hedge answered long before the slow primary would"
    assert response.headers["x-gateway-provider"] == REPLICATE
    assert response.headers["x-gateway-attempts"] == f"{FAL}=cancelled, {REPLICATE}=ok"
    assert _wait_for(lambda: sims.fal.stats()["cancels"] == 1), "the losing fal job is cancelled"
    records = [(r["deployment"], r["disposition"], r["cost_micros"]) for r in usage.since_mark()]
    assert records == [(FAL, "cancelled", "0"), (REPLICATE, "served", "1000")]


def test_max_price_and_pinned_order_without_fallbacks(gateway: Gateway, sims: Simulators) -> None:
    too_cheap = _post(gateway, {**BODY, "size": "1000x600", "provider": {"max_price": 0.001}})
    assert too_cheap.status_code == 400
    assert too_cheap.json()["error"]["param"] == "provider.max_price"

    sims.fal.fault("http_500", on="submit", times=1)
    response = _post(gateway, {**BODY, "provider": {"order": ["fal"], "allow_fallbacks": False}})
    assert response.status_code == 502, "no fallback was allowed"
    assert sims.replicate.calls() == 0


def test_bad_routing_input_is_400(gateway: Gateway, sims: Simulators) -> None:
    for body, param in [
        ({**BODY, "provider": {"sort": "cheapest"}}, "provider.sort"),
        ({**BODY, "provider": {"order": "fal"}}, "provider.order"),
        ({**BODY, "provider": {"max_price": "free"}}, "provider.max_price"),
        ({**BODY, "provider": "fal"}, "provider"),
    ]:
        response = _post(gateway, body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
    response = _post(gateway, timeout_s=-1)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-gateway-timeout"
    assert sims.total_calls() == 0


def test_connect_error_fails_over(start_gateway: Callable[..., Gateway], sims: Simulators) -> None:
    gateway = start_gateway(GATEWAY_FAL_BASE_URL=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    response = _post(gateway, {**BODY, "provider": {"order": ["fal", "replicate"]}})
    assert response.status_code == 200
    assert response.headers["x-gateway-attempts"] == f"{FAL}=provider_unavailable, {REPLICATE}=ok"


def test_auth_failure_ejects_the_deployment_without_failover(
    start_gateway: Callable[..., Gateway], sims: Simulators, usage: UsageLog
) -> None:
    gateway = start_gateway(FAL_KEY="fal-wrong-key-for-this-test")
    response = _post(gateway, {**BODY, "provider": {"order": ["fal", "replicate"]}})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "provider_auth_error"
    assert sims.replicate.calls() == 0, "an auth failure is the operator's to fix: no failover"
    health = _providers(gateway)[FAL]["health"]
    assert health["state"] == "open"
    assert health["retry_in_s"] > 60
    assert "rejected the gateway's credentials" in gateway.process.log_text()
    assert "fal-wrong-key-for-this-test" not in gateway.process.log_text()
    # With fal ejected, the next request goes straight to Replicate.
    assert _post(gateway).headers["x-gateway-attempts"] == f"{REPLICATE}=ok"


def test_spent_retry_budget_stops_failover(start_gateway: Callable[..., Gateway], sims: Simulators) -> None:
    gateway = start_gateway(GATEWAY_RETRY_BUDGET_RATIO="0", GATEWAY_RETRY_BUDGET_MIN="0")
    sims.replicate.fault("http_500", on="create", times=1)
    response = _post(gateway)
    assert response.status_code == 502
    assert "retry budget" in response.json()["error"]["message"]
    assert sims.fal.calls() == 0, "no failover beyond the budget"
