"""Ledger.settle (exactly once), spend, records and summary against a real redis-server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.accounts.principal import ADMIN_TEAM, Limits, Period, Principal
from gateway.metering import keys, ledger
from gateway.metering.ledger import SEEN_TTL_S, SETTLE_HORIZON_S, mp_micro
from tests.gateway.metering.conftest import Clock, Instance, usage_record

DAY_S = 86_400


async def day_counters(gw: Instance, day: date, team: str = "acme") -> dict[str, int]:
    raw = await gw.redis.hgetall(keys.usage_day(team, day))
    return {k.decode(): int(v) for k, v in raw.items()}


# --- exactly once ----------------------------------------------------------------------------------------


async def test_settling_twice_counts_once(gw: Instance, clock: Clock) -> None:
    record = usage_record("r1", clock, billed=12_345)
    assert await gw.ledger.settle(record) is True
    counted = (await day_counters(gw, clock.day()), await gw.ledger.spend("acme", None, Period.TOTAL))
    clock.advance(10)
    assert await gw.ledger.settle(record) is False
    assert (await day_counters(gw, clock.day()), await gw.ledger.spend("acme", None, Period.TOTAL)) == counted
    assert len(await gw.ledger.records("acme")) == 1


async def test_concurrent_settles_from_two_instances_count_once(
    make_instance: Callable[..., Instance], clock: Clock
) -> None:
    first, second = make_instance(), make_instance()
    await first.redis.flushall()
    records = [usage_record(f"r{i}", clock, billed=1_000 + i) for i in range(10)]
    results = await asyncio.gather(*((first, second)[j % 2].ledger.settle(r) for r in records for j in range(6)))
    assert sum(results) == 10
    assert await second.ledger.spend("acme", "key-1", Period.DAY) == sum(r.billed_micros for r in records)
    assert (await day_counters(first, clock.day()))["requests"] == 10
    assert len(await first.ledger.records("acme")) == 10


async def test_settled_ids_are_remembered_through_the_horizon(gw: Instance, clock: Clock) -> None:
    record = usage_record("r1", clock)
    assert await gw.ledger.settle(record)
    assert 0 < await gw.redis.ttl(keys.usage_seen("acme")) <= SEEN_TTL_S
    clock.advance(SETTLE_HORIZON_S - 1)  # a spool replayed after almost 35 days
    assert not await gw.ledger.settle(record)
    await gw.ledger.settle(usage_record("r2", clock))  # trims ids settled more than SEEN_TTL_S ago: none yet
    assert await gw.redis.zcard(keys.usage_seen("acme")) == 2


async def test_records_older_than_the_horizon_are_refused_and_logged(
    gw: Instance, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    stale = usage_record("old", clock, ts_ms=clock.ms() - SETTLE_HORIZON_S * 1000 - 1)
    with caplog.at_level(logging.ERROR, logger="gateway.metering.ledger"):
        assert await gw.ledger.settle(stale) is False
    assert "usage record old of team acme not settled" in caplog.text
    assert await gw.redis.keys("*") == []

    clock.advance(SEEN_TTL_S)  # ids settled that long ago are dropped from the dedupe set
    assert await gw.ledger.settle(usage_record("fresh", clock))
    clock.advance(SEEN_TTL_S)
    assert await gw.ledger.settle(usage_record("next", clock))
    assert await gw.redis.zrange(keys.usage_seen("acme"), 0, -1) == [b"next"]


async def test_settle_is_one_round_trip(gw: Instance, clock: Clock) -> None:
    await gw.ledger.settle(usage_record("warm", clock))  # loads the script into Redis's cache
    before = gw.round_trips.count
    assert await gw.ledger.settle(usage_record("r1", clock))
    assert not await gw.ledger.settle(usage_record("r1", clock))
    assert gw.round_trips.count - before == 2


# --- what a settle writes --------------------------------------------------------------------------------


async def test_settle_releases_slots_and_reservation_of_its_request(gw: Instance, clock: Clock) -> None:
    who = Principal(team="acme", key_id="key-1", team_limits=Limits(concurrency=1))
    assert (await gw.quota.admit(who, "r1", 30_000)).allowed
    assert await gw.ledger.settle(usage_record("r1", clock, billed=25_000, reserved=30_000))
    assert await gw.redis.zcard(keys.concurrency("acme")) == 0
    assert await gw.redis.zcard(keys.concurrency("acme", "key-1")) == 0
    assert await gw.redis.hgetall(keys.reservations("acme")) == {}
    assert await gw.redis.hgetall(keys.reserved_sums("acme")) == {}
    assert (await gw.quota.admit(who, "r2", 0)).allowed


async def test_day_counters_per_dimension(gw: Instance, clock: Clock) -> None:
    await gw.ledger.settle(usage_record("r1", clock, billed=100, cost=150, output_mp="1.048576", input_mp="0.5"))
    await gw.ledger.settle(
        usage_record("r2", clock, key_id="key-2", billed=0, cost=40, model="m:2", deployment="", output_mp="0")
    )
    counters = await day_counters(gw, clock.day())
    assert counters == {
        "requests": 2, "billed_micros": 100, "provider_cost_micros": 190,
        "output_mp_micro": 1_048_576, "input_mp_micro": 500_000,
        "key:key-1:requests": 1, "key:key-1:billed_micros": 100, "key:key-1:provider_cost_micros": 150,
        "key:key-1:output_mp_micro": 1_048_576, "key:key-1:input_mp_micro": 500_000,
        "model:flux.2-klein-4b:requests": 1, "model:flux.2-klein-4b:billed_micros": 100,
        "model:flux.2-klein-4b:provider_cost_micros": 150, "model:flux.2-klein-4b:output_mp_micro": 1_048_576,
        "model:flux.2-klein-4b:input_mp_micro": 500_000,
        "deployment:fal/flux.2-klein-4b:requests": 1, "deployment:fal/flux.2-klein-4b:billed_micros": 100,
        "deployment:fal/flux.2-klein-4b:provider_cost_micros": 150,
        "deployment:fal/flux.2-klein-4b:output_mp_micro": 1_048_576,
        "deployment:fal/flux.2-klein-4b:input_mp_micro": 500_000,
        "key:key-2:requests": 1, "key:key-2:provider_cost_micros": 40,
        "model:m:2:requests": 1, "model:m:2:provider_cost_micros": 40,
        "deployment::requests": 1, "deployment::provider_cost_micros": 40,
    }  # fmt: skip
    assert await gw.redis.smembers(keys.USAGE_TEAMS) == {b"acme"}
    assert mp_micro("0.0000005") == 1  # rounded half up to a whole micro-megapixel


async def test_spend_buckets_follow_the_records_utc_time(gw: Instance, clock: Clock) -> None:
    clock.now = datetime(2026, 12, 1, 0, 0, 30, tzinfo=UTC).timestamp()
    last_month = int(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)
    await gw.ledger.settle(usage_record("late", clock, billed=700, ts_ms=last_month))  # replayed from the spool
    await gw.ledger.settle(usage_record("now", clock, key_id="key-2", billed=50))
    assert await gw.ledger.spend("acme", None, Period.DAY) == 50
    assert await gw.ledger.spend("acme", None, Period.MONTH) == 50
    assert await gw.ledger.spend("acme", None, Period.TOTAL) == 750
    assert await gw.ledger.spend("acme", "key-1", Period.TOTAL) == 700
    assert await gw.ledger.spend("acme", "key-2", Period.DAY) == 50
    assert await gw.ledger.spend("acme", "nobody", Period.DAY) == 0
    assert int(await gw.redis.hget("spend:{acme}:month:2026-11", "key:key-1")) == 700
    assert int(await gw.redis.hget("spend:{acme}:day:2026-11-30", "team")) == 700
    assert 39 * DAY_S < await gw.redis.ttl("spend:{acme}:day:2026-11-30") <= 40 * DAY_S
    assert 399 * DAY_S < await gw.redis.ttl("spend:{acme}:month:2026-11") <= 400 * DAY_S
    assert await gw.redis.ttl("spend:{acme}:total") == -1
    assert (await day_counters(gw, date(2026, 11, 30)))["billed_micros"] == 700


async def test_the_admin_team_is_recorded(gw: Instance, clock: Clock) -> None:
    assert await gw.ledger.settle(usage_record("a1", clock, team=ADMIN_TEAM, key_id="admin", billed=9))
    assert await gw.redis.smembers(keys.USAGE_TEAMS) == {ADMIN_TEAM.encode()}
    [row] = await gw.ledger.summary(None, clock.day(), clock.day(), ["team"])
    assert (row["team"], row["requests"], row["billed_micros"]) == (ADMIN_TEAM, 1, 9)


# --- records ---------------------------------------------------------------------------------------------


async def test_records_filter_by_time_half_open(gw: Instance, clock: Clock) -> None:
    settled = []
    for i in range(6):
        record = usage_record(f"r{i}", clock, billed=i)
        assert await gw.ledger.settle(record)
        settled.append(record)
        clock.advance(60)
    t = [r.ts_ms for r in settled]
    assert await gw.ledger.records("acme") == settled
    assert [r.request_id for r in await gw.ledger.records("acme", t[1], t[4])] == ["r1", "r2", "r3"]
    assert [r.request_id for r in await gw.ledger.records("acme", start_ms=t[4])] == ["r4", "r5"]
    assert [r.request_id for r in await gw.ledger.records("acme", end_ms=t[1])] == ["r0"]
    assert [r.request_id for r in await gw.ledger.records("acme", t[1], limit=2)] == ["r1", "r2"]
    assert await gw.ledger.records("other") == []


async def test_records_finds_late_settles_across_pages(
    gw: Instance, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger, "PAGE", 3)
    finished = clock.ms()
    clock.advance(2 * DAY_S)
    for i in range(7):  # other traffic settled in between
        await gw.ledger.settle(usage_record(f"now-{i}", clock))
    late = usage_record("spooled", clock, ts_ms=finished)  # finished two days ago, settled now
    assert await gw.ledger.settle(late)
    entries = await gw.redis.xrange(keys.usage_stream("acme"))
    assert entries[0][0] == f"{clock.ms()}-0".encode()  # entry ids follow the caller's clock
    assert entries[-1][0] == f"{clock.ms()}-7".encode()
    assert await gw.ledger.records("acme", finished, finished + 1) == [late]
    assert len(await gw.ledger.records("acme", finished)) == 8


async def test_a_deleted_top_entry_does_not_block_settling(gw: Instance, clock: Clock) -> None:
    await gw.ledger.settle(usage_record("r1", clock))
    [(entry_id, _)] = await gw.redis.xrange(keys.usage_stream("acme"))
    await gw.redis.xdel(keys.usage_stream("acme"), entry_id)
    assert await gw.ledger.settle(usage_record("r2", clock))
    assert [r.request_id for r in await gw.ledger.records("acme")] == ["r2"]


# --- summary ---------------------------------------------------------------------------------------------


async def _traffic(gw: Instance, clock: Clock) -> tuple[date, date]:
    """Two days of usage for acme and one request for beta."""
    first = clock.day()
    await gw.ledger.settle(usage_record("a1", clock, billed=100, key_id="k1", model="m1", deployment="d1"))
    await gw.ledger.settle(usage_record("a2", clock, billed=200, key_id="k2", model="m1", deployment="d2"))
    clock.advance(DAY_S)
    await gw.ledger.settle(usage_record("a3", clock, billed=400, key_id="k1", model="m2", deployment="d1"))
    await gw.ledger.settle(usage_record("b1", clock, team="beta", billed=800, key_id="kb", model="m1"))
    return first, clock.day()


def _billed(rows: list[dict[str, object]], *fields: str) -> dict[tuple[object, ...], object]:
    return {tuple(r[f] for f in fields): r["billed_micros"] for r in rows}


async def test_summary_groups_by_team_day_key_model_deployment(gw: Instance, clock: Clock) -> None:
    first, second = await _traffic(gw, clock)
    summary = gw.ledger.summary

    assert _billed(await summary(None, first, second, ["team"]), "team") == {("acme",): 700, ("beta",): 800}
    assert _billed(await summary(["acme"], first, second, ["day"]), "day") == {
        (first.isoformat(),): 300, (second.isoformat(),): 400,
    }  # fmt: skip
    assert _billed(await summary(["acme"], first, second, ["key"]), "key") == {("k1",): 500, ("k2",): 200}
    assert _billed(await summary(None, first, second, ["team", "model"]), "team", "model") == {
        ("acme", "m1"): 300, ("acme", "m2"): 400, ("beta", "m1"): 800,
    }  # fmt: skip
    by_deployment = await summary(["acme"], first, first, ["deployment", "day"])
    assert _billed(by_deployment, "deployment", "day") == {
        ("d1", first.isoformat()): 100,
        ("d2", first.isoformat()): 200,
    }

    [total] = await summary(["acme", "beta"], first, second, [])
    assert total == {
        "requests": 4, "billed_micros": 1500, "provider_cost_micros": 1500,
        "output_megapixels": pytest.approx(4 * 1.048576), "input_megapixels": 0.0,
    }  # fmt: skip
    [row] = await summary(["acme"], second, second, ["team", "day", "model"])
    assert row == {
        "team": "acme", "day": second.isoformat(), "model": "m2", "requests": 1, "billed_micros": 400,
        "provider_cost_micros": 400, "output_megapixels": 1.048576, "input_megapixels": 0.0,
    }  # fmt: skip
    assert await summary(["acme"], second + timedelta(days=1), second + timedelta(days=9), ["team"]) == []


async def test_summary_rejects_groups_the_counters_cannot_answer(gw: Instance) -> None:
    today = date(2026, 11, 27)
    with pytest.raises(ValueError, match="at most one"):
        await gw.ledger.summary(["acme"], today, today, ["key", "model"])
    with pytest.raises(ValueError, match="cannot group"):
        await gw.ledger.summary(["acme"], today, today, ["colour"])


async def test_summary_is_one_round_trip(gw: Instance, clock: Clock) -> None:
    first, second = await _traffic(gw, clock)
    before = gw.round_trips.count
    rows = await gw.ledger.summary(["acme", "beta"], first - timedelta(days=30), second, ["team", "day"])
    assert gw.round_trips.count - before == 1
    assert len(rows) == 3
    await gw.ledger.summary(None, first, second, ["team"])
    assert gw.round_trips.count - before == 3  # every team: their names first, then the counters


async def test_works_with_a_decoding_client(make_instance: Callable[..., Instance], clock: Clock) -> None:
    gw = make_instance(decode_responses=True)
    await gw.redis.flushall()
    who = Principal(team="acme", key_id="key-1", key_limits=Limits(rpm=5, budget_micros=10**6))
    decision = await gw.quota.admit(who, "r1", 1000)
    assert (decision.allowed, decision.rpm_remaining, decision.budget_remaining_micros) == (True, 4, 10**6 - 1000)
    assert await gw.ledger.settle(usage_record("r1", clock))
    assert [r.request_id for r in await gw.ledger.records("acme")] == ["r1"]
    [row] = await gw.ledger.summary(None, clock.day(), clock.day(), ["key"])
    assert (row["key"], row["requests"]) == ("key-1", 1)
