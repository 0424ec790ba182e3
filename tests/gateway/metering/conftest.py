"""Quota and Ledger harness: a real redis-server, "gateway instances" with their own clients, a hand clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.metering.ledger import Ledger
from gateway.metering.quota import Quota
from gateway.metering.records import UsageRecord
from gateway.redis_server import EmbeddedRedis
from tests.redis_harness import Clock, RoundTrips, counting_redis

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp()


@dataclass
class Instance:
    """One "gateway instance": its own Redis client (and connection pool), Quota and Ledger."""

    redis: Redis
    quota: Quota
    ledger: Ledger
    round_trips: RoundTrips = field(default_factory=RoundTrips)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
async def make_instance(redis_server: EmbeddedRedis, clock: Clock) -> AsyncIterator[Callable[..., Instance]]:
    """Builds instances on the server; all share the test's clock and are closed at the end."""
    instances: list[Instance] = []

    def make(*, decode_responses: bool = False, **quota_options: Any) -> Instance:
        redis, round_trips = counting_redis(
            redis_server.url,
            decode_responses=decode_responses,
            max_connections=1000,  # redis-py's default of 100 raises MaxConnectionsError under a 300-way gather
        )
        instance = Instance(redis, Quota(redis, clock=clock, **quota_options), Ledger(redis, clock=clock), round_trips)
        instances.append(instance)
        return instance

    yield make
    for instance in instances:
        await instance.redis.aclose(close_connection_pool=True)


@pytest.fixture
async def gw(make_instance: Callable[..., Instance]) -> Instance:
    """One instance on a freshly flushed server."""
    instance = make_instance()
    await instance.redis.flushall()
    return instance


def usage_record(
    request_id: str,
    clock: Clock,
    *,
    team: str = "acme",
    key_id: str = "key-1",
    billed: int = 10_000,
    reserved: int = 20_000,
    cost: int | None = None,
    model: str = "flux.2-klein-4b",
    deployment: str = "fal/flux.2-klein-4b",
    output_mp: str = "1.048576",
    input_mp: str = "0",
    ts_ms: int | None = None,
) -> UsageRecord:
    """A usage record finished now (by `clock`), with the fields a test cares about."""
    return UsageRecord(
        request_id=request_id,
        ts_ms=clock.ms() if ts_ms is None else ts_ms,
        team=team,
        key_id=key_id,
        model=model,
        deployment=deployment,
        mode="generate",
        n=1,
        width=1024,
        height=1024,
        output_megapixels=output_mp,
        input_megapixels=input_mp,
        billed_micros=billed,
        provider_cost_micros=billed if cost is None else cost,
        attempts=1,
        attempts_json=f'[{{"deployment":"{deployment}","outcome":"success"}}]',
        latency_ms=900,
        outcome="ok",
        reserved_micros=reserved,
    )
