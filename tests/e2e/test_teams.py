"""Teams, keys, budgets, rate limits, idempotency and exact metering: real HTTP, real Redis, real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.metering.keys import usage_stream
from gateway.redis_server import EmbeddedRedis, free_port
from tests.e2e.conftest import Gateway, Simulators

REPLICATE = "replicate/flux.2-klein-4b"  # $0.001 for 1024x1024: the reservation equals the cost
BODY = {"model": REPLICATE, "prompt": "a lighthouse", "size": "1024x1024"}
GEN = "/v1/images/generations"


def _admin(gateway: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{gateway.url}/v1/admin{path}",
        headers={"Authorization": f"Bearer {gateway.key}"},
        timeout=10,
        **kwargs,
    )


def _team(gateway: Gateway, **limits: Any) -> str:
    team = f"t-{uuid.uuid4().hex[:10]}"
    response = _admin(gateway, "POST", "/teams", json={"id": team, "name": team, **limits})
    assert response.status_code == 201, response.text
    return team


def _key(gateway: Gateway, team: str, **limits: Any) -> str:
    response = _admin(gateway, "POST", "/keys", json={"team": team, "name": "test", **limits})
    assert response.status_code == 201, response.text
    return response.json()["key"]


async def _burst(urls: list[str], key: str, count: int, body: dict[str, Any] | None = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}{GEN}", json=body or BODY, headers={"Authorization": f"Bearer {key}"}
                )
                for i in range(count)
            )
        )


def _records(redis_client: redis.Redis, team: str) -> list[dict[str, str]]:
    return [fields for _, fields in redis_client.xrange(usage_stream(team))]


def _usage(gateway: Gateway, key: str, **params: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def team_gateways(start_gateway: Callable[..., Gateway]) -> tuple[Gateway, Gateway]:
    """Two gateway instances on one Redis; key checks are trusted for 0.5 s."""
    env = {"GATEWAY_AUTH_CACHE_TTL_S": "0.5"}
    return start_gateway(**env), start_gateway(**env)


@pytest.mark.parametrize("instances", [1, 2])
def test_budget_is_never_overspent_under_concurrency(
    team_gateways: tuple[Gateway, Gateway], sims: Simulators, redis_client: redis.Redis, instances: int
) -> None:
    gateway = team_gateways[0]
    team = _team(gateway, budget_usd="0.050", budget_period="day")  # covers exactly 50 requests
    key = _key(gateway, team)
    responses = asyncio.run(_burst([g.url for g in team_gateways[:instances]], key, 300))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 50, 429: 250}, statuses
    refusals = {r.json()["error"]["code"] for r in responses if r.status_code == 429}
    assert refusals == {"insufficient_quota"}
    assert "left" in next(r for r in responses if r.status_code == 429).json()["error"]["message"]

    records = _records(redis_client, team)
    assert len(records) == 50
    assert sum(int(r["billed_micros"]) for r in records) == 50_000  # the budget, to the micro-dollar
    assert {r["request_id"] for r in records} == {r.headers["x-request-id"] for r in responses if r.status_code == 200}
    report = _usage(gateway, gateway.key, team=team, group_by="team")
    assert report["totals"]["billed_micros"] == 50_000, "counters equal the sum of the records"
    assert report["totals"]["requests"] == 50
    assert sims.replicate.stats()["calls"]["create"] == 50, "refused requests never reach a provider"


def test_key_budget_and_model_restriction(team_gateways: tuple[Gateway, Gateway], sims: Simulators) -> None:
    gateway = team_gateways[0]
    team = _team(gateway)
    key = _key(gateway, team, budget_usd="0.002", budget_period="total", models=["flux.2-klein-4b"])
    statuses = [r.status_code for r in asyncio.run(_burst([gateway.url], key, 5))]
    assert sorted(statuses) == [200, 200, 429, 429, 429]


def test_rpm_limit_holds_under_a_burst(team_gateways: tuple[Gateway, Gateway], sims: Simulators) -> None:
    gateway = team_gateways[0]
    key = _key(gateway, _team(gateway), rpm=10)
    responses = asyncio.run(_burst([g.url for g in team_gateways], key, 30))
    assert Counter(r.status_code for r in responses) == {200: 10, 429: 20}
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "10"


def test_concurrency_limit_holds_under_a_burst(team_gateways: tuple[Gateway, Gateway], sims: Simulators) -> None:
    gateway = team_gateways[0]
    sims.replicate.configure(run_ms=1000)
    team = _team(gateway, concurrency=3)
    key = _key(gateway, team)
    responses = asyncio.run(_burst([g.url for g in team_gateways], key, 10))
    assert Counter(r.status_code for r in responses) == {200: 3, 429: 7}
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"concurrency_limit_exceeded"}
    # The slots come back when the requests finish.
    assert asyncio.run(_burst([gateway.url], key, 3))[0].status_code == 200


def test_revoked_key_is_refused_by_every_instance(team_gateways: tuple[Gateway, Gateway], sims: Simulators) -> None:
    a, b = team_gateways
    team = _team(a)
    key = _key(a, team)
    for gateway in (a, b):
        assert (
            httpx.post(f"{gateway.url}{GEN}", json=BODY, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
    key_id = key.split("_")[2]
    assert _admin(a, "POST", f"/keys/{team}/{key_id}/revoke").status_code == 200
    time.sleep(0.6)  # the instances' key caches are trusted for 0.5 s
    for gateway in (a, b):
        response = httpx.post(f"{gateway.url}{GEN}", json=BODY, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401
        assert key not in response.text


def test_no_raw_key_anywhere_in_redis(team_gateways: tuple[Gateway, Gateway], redis_client: redis.Redis) -> None:
    gateway = team_gateways[0]
    team = _team(gateway)
    keys = [_key(gateway, team) for _ in range(3)]
    secrets = [k.split("_", 3)[3] for k in keys]
    haystack: list[str] = []
    for name in redis_client.scan_iter("*"):
        haystack.append(name)
        kind = redis_client.type(name)
        if kind == "string":
            haystack.append(str(redis_client.get(name)))
        elif kind == "hash":
            haystack.extend(f"{k}={v}" for k, v in redis_client.hgetall(name).items())
        elif kind == "set":
            haystack.extend(redis_client.smembers(name))
        elif kind == "zset":
            haystack.extend(redis_client.zrange(name, 0, -1))
        elif kind == "stream":
            haystack.extend(json.dumps(fields) for _, fields in redis_client.xrange(name))
    blob = "\n".join(haystack)
    for raw, secret in zip(keys, secrets, strict=True):
        assert raw not in blob
        assert secret not in blob


def test_team_key_sees_only_its_own_usage(team_gateways: tuple[Gateway, Gateway], sims: Simulators) -> None:
    gateway = team_gateways[0]
    team, other = _team(gateway), _team(gateway)
    key = _key(gateway, team)
    assert httpx.post(f"{gateway.url}{GEN}", json=BODY, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    by_deployment = _usage(gateway, key, group_by="team,deployment")
    assert [(r["team"], r["deployment"], r["billed_micros"]) for r in by_deployment["data"]] == [
        (team, REPLICATE, 1000)
    ]
    by_model = _usage(gateway, key, group_by="model")
    assert [(r["model"], r["requests"]) for r in by_model["data"]] == [("flux.2-klein-4b", 1)]
    response = httpx.get(f"{gateway.url}/v1/usage", params={"team": other}, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    csv_text = httpx.get(
        f"{gateway.url}/v1/usage",
        params={"format": "csv", "group_by": "day,key"},
        headers={"Authorization": f"Bearer {key}"},
    ).text
    assert csv_text.splitlines()[0].startswith("day,key,requests,billed_usd")
    assert ",1,0.001000,1000," in csv_text.splitlines()[1]


def test_idempotent_retry_is_billed_once(
    team_gateways: tuple[Gateway, Gateway], sims: Simulators, redis_client: redis.Redis
) -> None:
    a, b = team_gateways
    team = _team(a)
    key = _key(a, team)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"retry-{uuid.uuid4()}"}
    first = httpx.post(f"{a.url}{GEN}", json=BODY, headers=headers)
    again = httpx.post(f"{b.url}{GEN}", json=BODY, headers=headers)  # a retry that lands on another instance
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len(_records(redis_client, team)) == 1
    assert sims.replicate.stats()["calls"]["create"] == 1

    changed = httpx.post(f"{a.url}{GEN}", json={**BODY, "prompt": "something else"}, headers=headers)
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_key_reused"


def test_concurrent_duplicates_wait_for_the_first(
    team_gateways: tuple[Gateway, Gateway], sims: Simulators, redis_client: redis.Redis
) -> None:
    sims.replicate.configure(run_ms=600)
    a, b = team_gateways
    team = _team(a)
    key = _key(a, team)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"dup-{uuid.uuid4()}"}

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(f"{g.url}{GEN}", json=BODY, headers=headers) for g in (a, b, a)))

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert sims.replicate.stats()["calls"]["create"] == 1, "the duplicates waited instead of running again"
    assert len(_records(redis_client, team)) == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/teams", {"id": "Not A Slug"}, 400, "id"),
        ("/teams", {"id": "ok-team", "budget_usd": "-1"}, 400, "budget_usd"),
        ("/teams", {"id": "ok-team", "budget_usd": "0.0000001"}, 400, "budget_usd"),
        ("/teams", {"id": "ok-team", "budget_period": "week"}, 400, "budget_period"),
        ("/keys", {"team": "no-such-team"}, 404, None),
        ("/keys", {"team": "x", "models": "flux"}, 400, "models"),
    ],
)
def test_bad_admin_input_is_a_clean_4xx(
    team_gateways: tuple[Gateway, Gateway], path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = _admin(team_gateways[0], "POST", path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param


def test_admin_api_needs_the_admin_key(team_gateways: tuple[Gateway, Gateway]) -> None:
    gateway = team_gateways[0]
    key = _key(gateway, _team(gateway))
    response = httpx.get(f"{gateway.url}/v1/admin/teams", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    assert httpx.get(f"{gateway.url}/v1/admin/teams").status_code == 401


def test_redis_killed_mid_load_loses_and_doubles_nothing(
    start_gateway: Callable[..., Gateway], sims: Simulators, tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "redis"
    outage_redis = EmbeddedRedis(data, port=port, fsync="always").start()
    try:
        gateway = start_gateway(
            GATEWAY_REDIS_URL=outage_redis.url,
            GATEWAY_REDIS_TIMEOUT_S="0.5",
            GATEWAY_SPOOL_REPLAY_INTERVAL_S="0.2",
            GATEWAY_DATA_DIR=str(tmp_path / "gateway-data"),
        )
        team = _team(gateway)
        key = _key(gateway, team)
        served: list[str] = []

        def send(count: int) -> None:
            for _ in range(count):
                response = httpx.post(
                    f"{gateway.url}{GEN}", json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=30
                )
                assert response.status_code == 200, response.text
                served.append(response.headers["x-request-id"])

        send(10)
        outage_redis.kill()  # a crash, not a clean shutdown
        send(10)  # served from the cached key, usage spooled to disk
        ready = httpx.get(f"{gateway.url}/readyz").json()
        assert ready["status"] == "degraded"
        assert ready["spooled_usage_records"] >= 1
        outage_redis = EmbeddedRedis(data, port=port, fsync="always").start()
        send(5)

        client = redis.Redis.from_url(outage_redis.url, decode_responses=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(_records(client, team)) < len(served):
            time.sleep(0.2)
        ids = Counter(r["request_id"] for r in _records(client, team))
        assert set(ids) == set(served), "every served request has a usage record"
        assert max(ids.values()) == 1, "and exactly one"
        client.close()
    finally:
        outage_redis.stop()


def test_usage_cli_prints_a_table_and_csv(team_gateways: tuple[Gateway, Gateway], sims: Simulators) -> None:
    gateway = team_gateways[0]
    team = _team(gateway)
    key = _key(gateway, team)
    for _ in range(2):
        assert (
            httpx.post(f"{gateway.url}{GEN}", json=BODY, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
    base = [sys.executable, "-m", "gateway", "usage", "--url", gateway.url, "--admin-key", gateway.key, "--team", team]
    table = subprocess.run([*base, "--group-by", "team,model"], capture_output=True, text=True, timeout=30, check=True)
    assert team in table.stdout
    assert "$0.002000" in table.stdout
    assert "total: 2 requests" in table.stdout
    csv_out = subprocess.run([*base, "--csv"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert csv_out.splitlines()[1].startswith(f"{team},2,0.002000,2000,")
    denied = subprocess.run(
        [*base[:-2], "--admin-key", key, "--team", "someone-else"], capture_output=True, text=True, timeout=30
    )
    assert denied.returncode == 1
    assert "only read its own team" in denied.stderr
