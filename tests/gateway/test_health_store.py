"""HealthStore against a real redis-server, with a controllable clock and counted round trips."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.health_store import STATE_TTL_S, HealthStore
from gateway.redis_server import EmbeddedRedis
from gateway.routing.health import Admission, AttemptOutcome, BreakerPolicy, BreakerState, DeploymentHealth
from tests.redis_harness import Clock, RoundTrips, counting_redis

POLICY = BreakerPolicy(
    consecutive_failures=3,
    window_s=60.0,
    min_requests=10,
    failure_rate=0.5,
    open_s=30.0,
    half_open_probes=2,
    successes_to_close=2,
    auth_open_s=300.0,
    max_retry_after_s=120.0,
    latency_alpha=0.2,
)
KEY = "fal/flux.2-klein-4b"
OTHER = "replicate/flux.2-klein-4b"
START = 1_700_000_000.0


@dataclass
class Instance:
    """One "gateway instance": its own Redis client (and connection pool) and its own HealthStore."""

    redis: Redis
    store: HealthStore
    round_trips: RoundTrips = field(default_factory=RoundTrips)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
async def make_instance(clock: Clock) -> AsyncIterator[Callable[..., Instance]]:
    """Builds instances on a server; all share the test's clock and are closed at the end."""
    instances: list[Instance] = []

    def make(server: EmbeddedRedis, policy: BreakerPolicy = POLICY, **options: Any) -> Instance:
        redis, round_trips = counting_redis(server.url)
        instance = Instance(redis, HealthStore(redis, policy, clock=clock, **options), round_trips)
        instances.append(instance)
        return instance

    yield make
    for instance in instances:
        await instance.redis.aclose(close_connection_pool=True)


@pytest.fixture
async def gateway(redis_server: EmbeddedRedis, make_instance: Callable[..., Instance]) -> Instance:
    """One instance on a freshly flushed server; its snapshots are not cached unless a test asks."""
    instance = make_instance(redis_server, cache_ttl_s=0.0)
    await instance.redis.flushall()
    return instance


@pytest.fixture
def doomed_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server of its own, for a test to stop."""
    with EmbeddedRedis(tmp_path / "doomed", appendonly=False) as server:
        yield server


async def _health(instance: Instance, key: str = KEY) -> DeploymentHealth:
    return (await instance.store.snapshot([key]))[key]


async def _fail(instance: Instance, times: int, outcome: AttemptOutcome = AttemptOutcome.FAILURE) -> None:
    for _ in range(times):
        await instance.store.record(KEY, outcome)


async def _open_then_wait(instance: Instance, clock: Clock) -> None:
    await _fail(instance, POLICY.consecutive_failures)
    clock.advance(POLICY.open_s)


# --- reading -----------------------------------------------------------------------------------------------


async def test_unknown_keys_snapshot_to_defaults(gateway: Instance) -> None:
    assert await gateway.store.snapshot([KEY, OTHER]) == {KEY: DeploymentHealth(KEY), OTHER: DeploymentHealth(OTHER)}


async def test_snapshot_is_one_round_trip_and_cached(
    redis_server: EmbeddedRedis, make_instance: Callable[..., Instance], clock: Clock
) -> None:
    instance = make_instance(redis_server, cache_ttl_s=0.25)
    await instance.redis.flushall()  # also opens the pooled connection, so its handshake is not counted
    keys = [KEY, OTHER, "fal/flux.2-klein-9b"]

    before = instance.round_trips.count
    first = await instance.store.snapshot(keys)
    assert instance.round_trips.count - before == 1
    assert await instance.store.snapshot(keys) == first
    clock.advance(0.2)
    assert await instance.store.snapshot(list(reversed(keys))) == first
    assert instance.round_trips.count - before == 1  # within the TTL: served from the cache

    clock.advance(0.1)
    await instance.store.snapshot(keys)
    assert instance.round_trips.count - before == 2


async def test_record_acquire_and_release_are_one_round_trip_each(gateway: Instance) -> None:
    await gateway.store.record(OTHER, AttemptOutcome.SUCCESS)  # loads the scripts into Redis's cache
    await gateway.store.acquire_probe(OTHER)
    await gateway.store.release_probe(OTHER)

    before = gateway.round_trips.count
    await gateway.store.record(KEY, AttemptOutcome.FAILURE, probe=True)
    assert gateway.round_trips.count - before == 1
    assert await gateway.store.acquire_probe(KEY)
    assert gateway.round_trips.count - before == 2
    await gateway.store.release_probe(KEY)
    assert gateway.round_trips.count - before == 3


async def test_record_invalidates_this_instances_cache(
    redis_server: EmbeddedRedis, make_instance: Callable[..., Instance]
) -> None:
    instance = make_instance(redis_server, cache_ttl_s=60.0)
    await instance.redis.flushall()
    assert (await _health(instance)).consecutive_failures == 0
    await instance.store.record(KEY, AttemptOutcome.FAILURE)
    assert (await _health(instance)).consecutive_failures == 1


async def test_keys_are_hash_tagged_and_expire(gateway: Instance) -> None:
    await gateway.store.record(KEY, AttemptOutcome.SUCCESS)
    assert await gateway.redis.keys("*") == [b"health:{fal/flux.2-klein-4b}"]
    assert STATE_TTL_S - 5 < await gateway.redis.ttl("health:{fal/flux.2-klein-4b}") <= STATE_TTL_S


async def test_works_with_a_decoding_client_and_fractional_megapixels(
    redis_server: EmbeddedRedis, gateway: Instance, clock: Clock
) -> None:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        store = HealthStore(redis, POLICY, clock=clock, cache_ttl_s=0.0)
        await store.record(KEY, AttemptOutcome.SUCCESS, elapsed_s=3.0, megapixels=Fraction(3, 2))
        await store.record(KEY, AttemptOutcome.AUTH_FAILURE)
        health = (await store.snapshot([KEY]))[KEY]
        assert (health.state, health.latency_s_per_mp, health.window_successes) == (BreakerState.OPEN, 2.0, 1)
        assert health == await _health(gateway)  # and a bytes client reads the same
    finally:
        await redis.aclose()


# --- breaker -----------------------------------------------------------------------------------------------


async def test_consecutive_failures_open_the_breaker(gateway: Instance, clock: Clock) -> None:
    await _fail(gateway, POLICY.consecutive_failures - 1)
    await gateway.store.record(KEY, AttemptOutcome.SUCCESS)  # a success breaks the run
    await _fail(gateway, POLICY.consecutive_failures - 1)
    health = await _health(gateway)
    assert (health.state, health.consecutive_failures) == (BreakerState.CLOSED, 2)
    assert health.admission(clock()) is Admission.ALLOW

    await _fail(gateway, 1)
    health = await _health(gateway)
    assert (health.state, health.retry_at) == (BreakerState.OPEN, clock() + POLICY.open_s)
    assert health.admission(clock()) is Admission.DENY


async def test_open_denies_until_retry_at_then_grants_exactly_the_probe_slots(gateway: Instance, clock: Clock) -> None:
    await _fail(gateway, POLICY.consecutive_failures)
    clock.advance(POLICY.open_s - 0.001)
    assert (await _health(gateway)).admission(clock()) is Admission.DENY
    assert not await gateway.store.acquire_probe(KEY)
    assert (await _health(gateway)).state is BreakerState.OPEN

    clock.advance(0.001)
    assert (await _health(gateway)).admission(clock()) is Admission.PROBE
    grants = [await gateway.store.acquire_probe(KEY) for _ in range(POLICY.half_open_probes + 2)]
    assert grants == [True] * POLICY.half_open_probes + [False, False]
    health = await _health(gateway)
    assert (health.state, health.probes_in_flight) == (BreakerState.HALF_OPEN, POLICY.half_open_probes)
    assert health.admission(clock()) is Admission.PROBE


async def test_a_released_probe_slot_is_granted_again(gateway: Instance, clock: Clock) -> None:
    await _open_then_wait(gateway, clock)
    assert [await gateway.store.acquire_probe(KEY) for _ in range(3)] == [True, True, False]
    await gateway.store.record(KEY, AttemptOutcome.SUCCESS, probe=True)
    assert (await _health(gateway)).probes_in_flight == 1
    assert await gateway.store.acquire_probe(KEY)


async def test_release_probe_gives_a_slot_back_without_an_outcome(gateway: Instance, clock: Clock) -> None:
    await gateway.store.release_probe(KEY)  # nothing to release: no hash is created
    assert await gateway.redis.exists(gateway.store.redis_key(KEY)) == 0
    await _open_then_wait(gateway, clock)
    assert [await gateway.store.acquire_probe(KEY) for _ in range(3)] == [True, True, False]
    await gateway.store.release_probe(KEY)
    health = await _health(gateway)
    assert (health.state, health.probes_in_flight, health.half_open_successes) == (BreakerState.HALF_OPEN, 1, 0)
    assert await gateway.store.acquire_probe(KEY)
    for _ in range(3):
        await gateway.store.release_probe(KEY)
    assert (await _health(gateway)).probes_in_flight == 0


async def test_probe_successes_close_the_breaker(gateway: Instance, clock: Clock) -> None:
    await _open_then_wait(gateway, clock)
    assert await gateway.store.acquire_probe(KEY)
    assert await gateway.store.acquire_probe(KEY)
    await gateway.store.record(KEY, AttemptOutcome.SUCCESS, probe=True)
    health = await _health(gateway)
    assert (health.state, health.half_open_successes, health.probes_in_flight) == (BreakerState.HALF_OPEN, 1, 1)

    await gateway.store.record(KEY, AttemptOutcome.SUCCESS, probe=True)
    health = await _health(gateway)
    assert health == DeploymentHealth(KEY)
    assert health.admission(clock()) is Admission.ALLOW
    assert await gateway.store.acquire_probe(KEY)  # closed: no slot needed
    assert (await _health(gateway)).probes_in_flight == 0


async def test_probe_failure_reopens_with_a_fresh_retry_at(gateway: Instance, clock: Clock) -> None:
    await _open_then_wait(gateway, clock)
    assert await gateway.store.acquire_probe(KEY)
    await gateway.store.record(KEY, AttemptOutcome.SUCCESS, probe=True)
    clock.advance(5)
    await gateway.store.record(KEY, AttemptOutcome.FAILURE, probe=True)
    health = await _health(gateway)
    assert (health.state, health.retry_at, health.half_open_successes) == (BreakerState.OPEN, clock() + 30, 0)
    assert health.probes_in_flight == 0
    assert not await gateway.store.acquire_probe(KEY)


async def test_a_leaked_probe_slot_frees_itself_after_open_s(gateway: Instance, clock: Clock) -> None:
    await _open_then_wait(gateway, clock)
    assert await gateway.store.acquire_probe(KEY)  # these two gateways die before they record
    assert await gateway.store.acquire_probe(KEY)
    clock.advance(POLICY.open_s - 1)
    assert not await gateway.store.acquire_probe(KEY)
    assert (await _health(gateway)).probes_in_flight == 2
    clock.advance(1)
    assert (await _health(gateway)).probes_in_flight == 0
    assert await gateway.store.acquire_probe(KEY)
    assert (await _health(gateway)).probes_in_flight == 1


async def test_failure_rate_opens_the_breaker_once_the_window_has_min_requests(gateway: Instance) -> None:
    # alternate so the consecutive-failure rule never fires: only the rate can open the breaker
    for attempt in range(POLICY.min_requests - 1):
        outcome = AttemptOutcome.FAILURE if attempt % 2 == 0 else AttemptOutcome.SUCCESS
        await gateway.store.record(KEY, outcome)
    health = await _health(gateway)
    assert (health.state, health.window_failures, health.window_successes) == (BreakerState.CLOSED, 5, 4)
    assert health.success_rate == pytest.approx(4 / 9)

    await gateway.store.record(KEY, AttemptOutcome.SUCCESS)  # 10 attempts, 5 failed: at the threshold
    assert (await _health(gateway)).state is BreakerState.CLOSED  # only failures open the breaker
    await gateway.store.record(KEY, AttemptOutcome.FAILURE)
    assert (await _health(gateway)).state is BreakerState.OPEN


async def test_a_low_failure_rate_keeps_the_breaker_closed(gateway: Instance) -> None:
    for attempt in range(3 * POLICY.min_requests):
        outcome = AttemptOutcome.FAILURE if attempt % 3 == 0 else AttemptOutcome.SUCCESS
        await gateway.store.record(KEY, outcome)
    health = await _health(gateway)
    assert (health.state, health.window_failures, health.window_successes) == (BreakerState.CLOSED, 10, 20)


async def test_the_window_rolls_over(gateway: Instance, clock: Clock) -> None:
    for attempt in range(POLICY.min_requests - 1):
        await gateway.store.record(KEY, AttemptOutcome.FAILURE if attempt % 2 == 0 else AttemptOutcome.SUCCESS)
    clock.advance(POLICY.window_s)
    health = await _health(gateway)
    assert (health.window_failures, health.window_successes, health.success_rate) == (0, 0, None)

    await gateway.store.record(KEY, AttemptOutcome.FAILURE)  # would have opened the old window
    health = await _health(gateway)
    assert (health.state, health.window_failures, health.window_successes) == (BreakerState.CLOSED, 1, 0)


# --- cool-downs --------------------------------------------------------------------------------------------


async def test_rate_limited_cools_down_without_opening(gateway: Instance, clock: Clock) -> None:
    await gateway.store.record(KEY, AttemptOutcome.RATE_LIMITED, retry_after_s=10)
    health = await _health(gateway)
    assert (health.state, health.retry_at, health.consecutive_failures) == (BreakerState.CLOSED, clock() + 10, 1)
    assert health.admission(clock() + 9.999) is Admission.DENY
    assert health.admission(clock() + 10) is Admission.ALLOW

    await gateway.store.record(KEY, AttemptOutcome.RATE_LIMITED, retry_after_s=2)  # never shortens
    assert (await _health(gateway)).retry_at == clock() + 10


async def test_rate_limited_without_retry_after_cools_down_one_second(gateway: Instance, clock: Clock) -> None:
    await gateway.store.record(KEY, AttemptOutcome.RATE_LIMITED)
    assert (await _health(gateway)).retry_at == clock() + 1


async def test_retry_after_is_capped(gateway: Instance, clock: Clock) -> None:
    await gateway.store.record(KEY, AttemptOutcome.RATE_LIMITED, retry_after_s=3600)
    health = await _health(gateway)
    assert (health.state, health.retry_at) == (BreakerState.CLOSED, clock() + POLICY.max_retry_after_s)


async def test_rate_limits_count_as_failures_and_open_with_the_longer_wait(gateway: Instance, clock: Clock) -> None:
    await _fail(gateway, POLICY.consecutive_failures - 1)
    await gateway.store.record(KEY, AttemptOutcome.RATE_LIMITED, retry_after_s=90)
    health = await _health(gateway)
    assert (health.state, health.retry_at) == (BreakerState.OPEN, clock() + 90)


async def test_auth_failure_opens_for_auth_open_s(gateway: Instance, clock: Clock) -> None:
    await gateway.store.record(KEY, AttemptOutcome.AUTH_FAILURE)
    health = await _health(gateway)
    assert (health.state, health.retry_at) == (BreakerState.OPEN, clock() + POLICY.auth_open_s)
    clock.advance(POLICY.auth_open_s - 1)
    assert not await gateway.store.acquire_probe(KEY)
    clock.advance(1)
    assert await gateway.store.acquire_probe(KEY)


async def test_force_open_and_reset(gateway: Instance, clock: Clock) -> None:
    await gateway.store.record(KEY, AttemptOutcome.AUTH_FAILURE)
    await gateway.store.force_open(KEY, 5)  # an operator shortens the ejection
    health = await _health(gateway)
    assert (health.state, health.retry_at) == (BreakerState.OPEN, clock() + 5)
    assert 0 < await gateway.redis.ttl(gateway.store.redis_key(KEY)) <= STATE_TTL_S

    await gateway.store.reset(KEY)
    assert await _health(gateway) == DeploymentHealth(KEY)
    assert await gateway.redis.exists(gateway.store.redis_key(KEY)) == 0


# --- latency -----------------------------------------------------------------------------------------------


async def test_latency_ewma_and_p95(gateway: Instance) -> None:
    assert (await _health(gateway)).latency_s_per_mp is None
    await gateway.store.record(KEY, AttemptOutcome.SUCCESS, elapsed_s=2.0, megapixels=1.0)  # x = 2
    health = await _health(gateway)
    assert (health.latency_s_per_mp, health.latency_p95_s_per_mp, health.latency_samples) == (2.0, 2.0, 1)

    await gateway.store.record(KEY, AttemptOutcome.SUCCESS, elapsed_s=4.0, megapixels=1.0)  # x = 4
    await gateway.store.record(KEY, AttemptOutcome.SUCCESS, elapsed_s=2.0, megapixels=2.0)  # x = 1
    # ignored: no megapixels, or not a success
    await gateway.store.record(KEY, AttemptOutcome.SUCCESS, elapsed_s=50.0)
    await gateway.store.record(KEY, AttemptOutcome.FAILURE, elapsed_s=50.0, megapixels=1.0)

    # by hand, a = 0.2: m = 2, v = 0; x = 4: m = 2.4, v = 0.8 * (0 + 0.2 * 2²) = 0.64;
    # x = 1: m = 2.4 + 0.2 * -1.4 = 2.12, v = 0.8 * (0.64 + 0.2 * 1.96) = 0.8256
    health = await _health(gateway)
    assert health.latency_samples == 3
    assert health.latency_s_per_mp == pytest.approx(2.12, abs=1e-12)
    assert health.latency_p95_s_per_mp == pytest.approx(2.12 + 1.645 * math.sqrt(0.8256), abs=1e-12)


# --- several gateway instances -----------------------------------------------------------------------------


async def test_a_breaker_opened_by_one_instance_is_seen_by_another_after_its_cache_ttl(
    redis_server: EmbeddedRedis, make_instance: Callable[..., Instance], clock: Clock
) -> None:
    first, second = make_instance(redis_server), make_instance(redis_server)
    await first.redis.flushall()
    assert (await _health(second)).state is BreakerState.CLOSED

    await _fail(first, POLICY.consecutive_failures)
    assert (await _health(first)).state is BreakerState.OPEN
    clock.advance(0.2)
    assert (await _health(second)).state is BreakerState.CLOSED  # still within its 0.25 s cache
    clock.advance(0.05)
    health = await _health(second)
    assert (health.state, health.admission(clock())) == (BreakerState.OPEN, Admission.DENY)


async def test_concurrent_probes_from_two_instances_get_exactly_the_allowed_slots(
    redis_server: EmbeddedRedis, make_instance: Callable[..., Instance], clock: Clock
) -> None:
    first, second = make_instance(redis_server), make_instance(redis_server)
    await first.redis.flushall()
    await _open_then_wait(first, clock)

    grants = await asyncio.gather(*(instance.store.acquire_probe(KEY) for instance in [first, second] * 25))
    assert sum(grants) == POLICY.half_open_probes
    health = await _health(second)
    assert (health.state, health.probes_in_flight) == (BreakerState.HALF_OPEN, POLICY.half_open_probes)


# --- Redis down --------------------------------------------------------------------------------------------


async def test_redis_down_serves_last_known_health(
    doomed_server: EmbeddedRedis,
    make_instance: Callable[..., Instance],
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instance = make_instance(doomed_server)
    await _fail(instance, POLICY.consecutive_failures)
    opened = await _health(instance)
    assert opened.state is BreakerState.OPEN
    doomed_server.stop()
    clock.advance(1)

    with caplog.at_level(logging.WARNING, logger="gateway.health_store"):
        assert await instance.store.snapshot([KEY, OTHER]) == {KEY: opened, OTHER: DeploymentHealth(OTHER)}
    assert "serving last known values" in caplog.text


async def test_redis_down_probes_only_a_known_closed_breaker(
    doomed_server: EmbeddedRedis, make_instance: Callable[..., Instance], clock: Clock
) -> None:
    instance = make_instance(doomed_server, cache_ttl_s=0.0)
    await _fail(instance, POLICY.consecutive_failures)
    await instance.store.snapshot([KEY, OTHER])
    clock.advance(POLICY.open_s)  # past retry_at, yet no slot can be taken without Redis
    doomed_server.stop()

    assert not await instance.store.acquire_probe(KEY)
    assert await instance.store.acquire_probe(OTHER)  # closed when last seen
    assert await instance.store.acquire_probe("never/seen")  # defaults are closed too
    assert not await instance.store.acquire_probe(KEY)  # the failed attempt kept the last known value


async def test_redis_down_record_and_release_log_and_drop(
    doomed_server: EmbeddedRedis, make_instance: Callable[..., Instance], caplog: pytest.LogCaptureFixture
) -> None:
    instance = make_instance(doomed_server)
    doomed_server.stop()
    with caplog.at_level(logging.WARNING, logger="gateway.health_store"):
        await instance.store.record(KEY, AttemptOutcome.FAILURE, probe=True)
        await instance.store.release_probe(KEY)
    assert "health record for fal/flux.2-klein-4b dropped" in caplog.text
    assert "probe slot for fal/flux.2-klein-4b not released" in caplog.text
    assert await _health(instance) == DeploymentHealth(KEY)
