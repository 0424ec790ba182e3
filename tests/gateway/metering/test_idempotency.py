"""IdempotencyStore against a real redis-server, with a hand-moved clock and counted round trips."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from gateway.metering.idempotency import (
    MAX_KEY_LENGTH,
    IdemBegin,
    IdempotencyStore,
    IdemState,
    StoredResponse,
    fingerprint,
)
from gateway.redis_server import EmbeddedRedis
from tests.redis_harness import Clock, RoundTrips, counting_redis

TEAM = "acme"
KEY = "retry-me-7f3a"
FP = fingerprint("POST", "/v1/images/generations", b'{"prompt":"a fox","n":1}')
OTHER_FP = fingerprint("POST", "/v1/images/generations", b'{"prompt":"a cat","n":1}')
START = 1_700_000_000.0
DAY_MS = 86_400_000
RESPONSE = StoredResponse(200, {"content-type": "application/json", "x-gateway-deployment": "fal"}, b'{"data":[]}')


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
async def make_client(redis_server: EmbeddedRedis) -> AsyncIterator[Callable[[], tuple[Redis, RoundTrips]]]:
    """Independent Redis clients (each its own pool, like two gateway instances), closed at the end."""
    clients: list[Redis] = []

    def make() -> tuple[Redis, RoundTrips]:
        client, round_trips = counting_redis(redis_server.url)
        clients.append(client)
        return client, round_trips

    yield make
    for client in clients:
        await client.aclose(close_connection_pool=True)


@pytest.fixture
async def redis(make_client: Callable[[], tuple[Redis, RoundTrips]]) -> Redis:
    client, _ = make_client()
    await client.flushall()
    return client


@pytest.fixture
def store(redis: Redis, clock: Clock) -> IdempotencyStore:
    return IdempotencyStore(redis, clock=clock)


async def test_new_then_done_replays_the_exact_stored_response(store: IdempotencyStore) -> None:
    assert await store.begin(TEAM, KEY, FP) == IdemBegin(IdemState.NEW)
    body = bytes(range(256)) * 4  # not UTF-8: the body must come back byte for byte
    response = StoredResponse(201, {"content-type": "image/png", "x-request-id": "req-1"}, body)
    await store.complete(TEAM, KEY, FP, response)

    assert await store.begin(TEAM, KEY, FP) == IdemBegin(IdemState.DONE, response)
    assert await store.begin(TEAM, KEY, FP) == IdemBegin(IdemState.DONE, response)  # and again


async def test_another_request_under_the_same_key_is_a_mismatch(store: IdempotencyStore) -> None:
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.NEW
    assert await store.begin(TEAM, KEY, OTHER_FP) == IdemBegin(IdemState.MISMATCH)  # while in progress
    await store.complete(TEAM, KEY, OTHER_FP, RESPONSE)  # not its claim: stores nothing
    assert await store.begin(TEAM, KEY, FP) == IdemBegin(IdemState.IN_PROGRESS)

    await store.complete(TEAM, KEY, FP, RESPONSE)
    assert await store.begin(TEAM, KEY, OTHER_FP) == IdemBegin(IdemState.MISMATCH)  # and once done


async def test_keys_are_scoped_per_team(store: IdempotencyStore) -> None:
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.NEW
    assert (await store.begin("globex", KEY, OTHER_FP)).state is IdemState.NEW


async def test_concurrent_begins_from_two_clients_claim_exactly_once(
    make_client: Callable[[], tuple[Redis, list[int]]], store: IdempotencyStore, clock: Clock
) -> None:
    other = IdempotencyStore(make_client()[0], clock=clock)
    stores = [store, other] * 10

    results = await asyncio.gather(*(s.begin(TEAM, KEY, FP) for s in stores))

    states = [r.state for r in results]
    assert states.count(IdemState.NEW) == 1
    assert states.count(IdemState.IN_PROGRESS) == 19


async def test_wait_returns_done_once_another_task_completes(store: IdempotencyStore) -> None:
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.NEW

    async def finish_later() -> None:
        await asyncio.sleep(0.15)
        await store.complete(TEAM, KEY, FP, RESPONSE)

    finisher = asyncio.create_task(finish_later())
    assert await store.wait(TEAM, KEY, FP, timeout_s=5.0, poll_s=0.01) == IdemBegin(IdemState.DONE, RESPONSE)
    await finisher


async def test_wait_gives_up_in_progress_at_the_timeout(store: IdempotencyStore) -> None:
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.NEW
    loop = asyncio.get_running_loop()
    started = loop.time()

    assert await store.wait(TEAM, KEY, FP, timeout_s=0.2, poll_s=0.05) == IdemBegin(IdemState.IN_PROGRESS)
    assert 0.2 <= loop.time() - started < 1.0


async def test_abandon_lets_the_next_begin_run_it_again(store: IdempotencyStore) -> None:
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.NEW
    await store.abandon(TEAM, KEY, OTHER_FP)  # not its claim: a no-op
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.IN_PROGRESS

    await store.abandon(TEAM, KEY, FP)
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.NEW


async def test_abandon_never_deletes_a_stored_response(store: IdempotencyStore) -> None:
    await store.begin(TEAM, KEY, FP)
    await store.complete(TEAM, KEY, FP, RESPONSE)
    await store.abandon(TEAM, KEY, FP)
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.DONE


async def test_an_expired_lock_is_reclaimed(store: IdempotencyStore, clock: Clock) -> None:
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.NEW
    clock.now += 599.0
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.IN_PROGRESS
    clock.now += 1.0  # lock_ttl_s = 600: the first gateway is presumed dead
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.NEW
    assert (await store.begin(TEAM, KEY, FP)).state is IdemState.IN_PROGRESS  # the new claim holds its own lock

    await store.complete(TEAM, KEY, FP, RESPONSE)
    late = StoredResponse(500, {}, b"late")
    await store.complete(TEAM, KEY, FP, late)  # the presumed-dead first one finishing: the stored answer stands
    assert await store.begin(TEAM, KEY, FP) == IdemBegin(IdemState.DONE, RESPONSE)


async def test_entries_expire_after_about_a_day(store: IdempotencyStore, redis: Redis) -> None:
    redis_key = store.redis_key(TEAM, KEY)
    await store.begin(TEAM, KEY, FP)
    assert DAY_MS - 5_000 < await redis.pttl(redis_key) <= DAY_MS
    await store.complete(TEAM, KEY, FP, RESPONSE)
    assert DAY_MS - 5_000 < await redis.pttl(redis_key) <= DAY_MS


async def test_a_5_mb_body_round_trips(store: IdempotencyStore) -> None:
    response = StoredResponse(200, {"content-type": "application/json"}, os.urandom(5 * 1024 * 1024))
    await store.begin(TEAM, KEY, FP)
    await store.complete(TEAM, KEY, FP, response)
    assert await store.begin(TEAM, KEY, FP) == IdemBegin(IdemState.DONE, response)


async def test_keys_are_capped_and_stored_only_hashed(store: IdempotencyStore, redis: Redis) -> None:
    with pytest.raises(ValueError, match="255"):
        await store.begin(TEAM, "k" * (MAX_KEY_LENGTH + 1), FP)
    with pytest.raises(ValueError):
        await store.begin(TEAM, "", FP)
    assert await redis.dbsize() == 0  # a refused key leaves nothing behind

    longest = "k" * MAX_KEY_LENGTH
    assert (await store.begin(TEAM, longest, FP)).state is IdemState.NEW
    assert await redis.keys("*") == [f"idem:{{{TEAM}}}:{hashlib.sha256(longest.encode()).hexdigest()}".encode()]


async def test_each_call_is_one_round_trip(make_client: Callable[[], tuple[Redis, list[int]]], clock: Clock) -> None:
    client, sent = make_client()
    store = IdempotencyStore(client, clock=clock)
    await client.flushall()
    await store.begin(TEAM, "warm-up", FP)  # loads the script once (EVALSHA, NOSCRIPT, then EVAL)
    await store.complete(TEAM, "warm-up", FP, RESPONSE)
    await store.abandon(TEAM, "warm-up", FP)

    for call in (
        store.begin(TEAM, KEY, FP),
        store.complete(TEAM, KEY, FP, RESPONSE),
        store.begin(TEAM, KEY, FP),
        store.abandon(TEAM, KEY, FP),
    ):
        before = sent.count
        await call
        assert sent.count - before == 1


def test_fingerprint_covers_method_path_and_body() -> None:
    body = b'{"prompt":"a fox"}'
    base = fingerprint("POST", "/v1/images/generations", body)
    assert base == fingerprint("post", "/v1/images/generations", body)
    assert len(base) == 64
    assert base != fingerprint("PUT", "/v1/images/generations", body)
    assert base != fingerprint("POST", "/v1/images/edits", body)
    assert base != fingerprint("POST", "/v1/images/generations", body + b" ")
