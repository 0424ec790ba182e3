"""Quota.admit / release against a real redis-server: atomic across two instances, with a hand clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from gateway.accounts.principal import ADMIN_TEAM, Limits, Period, Principal
from gateway.metering import keys
from gateway.metering.quota import QuotaDecision
from tests.gateway.metering.conftest import Clock, Instance, usage_record

RESERVE = 20_000


def principal(key: Limits | None = None, team: Limits | None = None, *, key_id: str = "key-1") -> Principal:
    return Principal(team="acme", key_id=key_id, key_limits=key or Limits(), team_limits=team or Limits())


async def reserved(gw: Instance, field: str = "team") -> int:
    return int(await gw.redis.hget(keys.reserved_sums("acme"), field) or 0)


async def in_flight(gw: Instance, key_id: str | None = None) -> int:
    return int(await gw.redis.zcard(keys.concurrency("acme", key_id)))


async def snapshot(gw: Instance) -> dict[bytes, object]:
    """Every key and its whole value, to show that a refusal changes nothing."""
    state: dict[bytes, object] = {}
    for name in sorted(await gw.redis.keys("*")):
        kind = await gw.redis.type(name)
        if kind == b"zset":
            state[name] = await gw.redis.zrange(name, 0, -1, withscores=True)
        elif kind == b"hash":
            state[name] = await gw.redis.hgetall(name)
        else:
            state[name] = kind
    return state


# --- the key property: budgets hold under a stampede from two instances ----------------------------------


@pytest.mark.parametrize("scope", ["team", "key"])
async def test_300_concurrent_admits_from_two_instances_reserve_exactly_the_budget(
    make_instance: Callable[..., Instance], clock: Clock, scope: str
) -> None:
    first, second = make_instance(), make_instance()
    await first.redis.flushall()
    budget = Limits(budget_micros=50 * RESERVE, budget_period=Period.DAY)
    who = principal(team=budget) if scope == "team" else principal(key=budget)

    decisions = await asyncio.gather(
        *((first, second)[i % 2].quota.admit(who, f"req-{i}", RESERVE) for i in range(300))
    )
    allowed = [f"req-{i}" for i, d in enumerate(decisions) if d.allowed]
    assert len(allowed) == 50
    refused = {(d.reason, d.scope) for d in decisions if not d.allowed}
    assert refused == {("budget", scope)}
    assert {d.budget_remaining_micros for d in decisions if not d.allowed} == {0}
    field = "team" if scope == "team" else "key:key-1"
    assert await reserved(first, field) == 50 * RESERVE

    # settle each allowed request from either instance, billed up to its reservation
    records = [
        usage_record(rid, clock, billed=RESERVE - i % 7 * 1_000, reserved=RESERVE) for i, rid in enumerate(allowed)
    ]
    assert all(await asyncio.gather(*((first, second)[i % 2].ledger.settle(r) for i, r in enumerate(records))))
    spent = sum(r.billed_micros for r in records)
    assert await first.ledger.spend("acme", None, Period.DAY) == spent
    assert await first.ledger.spend("acme", "key-1", Period.DAY) == spent
    assert spent <= budget.budget_micros
    assert await reserved(first, "team") == await reserved(first, "key:key-1") == 0
    assert await in_flight(first) == await in_flight(first, "key-1") == 0

    # the day counters agree with the stream, to the micro-dollar
    stream = await second.ledger.records("acme")
    assert sorted(r.request_id for r in stream) == sorted(allowed)
    [row] = await second.ledger.summary(["acme"], clock.day(), clock.day(), ["team"])
    assert row["requests"] == len(stream) == 50
    assert row["billed_micros"] == sum(r.billed_micros for r in stream) == spent

    # what is left is exactly what the budget still admits
    left = budget.budget_micros - spent
    refused_one = await first.quota.admit(who, "one-too-many", left + 1)
    assert (refused_one.reason, refused_one.budget_remaining_micros) == ("budget", left)
    last = await second.quota.admit(who, "last", left)
    assert (last.allowed, last.budget_remaining_micros) == (True, 0)


# --- requests per minute ---------------------------------------------------------------------------------


async def test_a_burst_of_twice_the_rpm_admits_exactly_the_limit(
    make_instance: Callable[..., Instance], clock: Clock
) -> None:
    first, second = make_instance(), make_instance()
    await first.redis.flushall()
    who = principal(key=Limits(rpm=10))
    decisions = await asyncio.gather(*((first, second)[i % 2].quota.admit(who, f"r{i}", 0) for i in range(20)))
    assert sum(d.allowed for d in decisions) == 10
    refusals = [d for d in decisions if not d.allowed]
    assert {(d.reason, d.scope, d.retry_after_s) for d in refusals} == {("rpm", "key", 60.0)}
    assert {(d.rpm_limit, d.rpm_remaining, d.rpm_reset_s) for d in refusals} == {(10, 0, 60.0)}


async def test_the_rpm_window_slides(gw: Instance, clock: Clock) -> None:
    who = principal(key=Limits(rpm=5))
    for i in range(3):
        assert (await gw.quota.admit(who, f"early-{i}", 0)).allowed
    clock.advance(30)
    for i in range(2):
        assert (await gw.quota.admit(who, f"late-{i}", 0)).allowed

    clock.advance(29.5)
    refused = await gw.quota.admit(who, "x", 0)
    assert (refused.reason, refused.retry_after_s) == ("rpm", pytest.approx(0.5))
    clock.advance(0.5)  # the three early ones are exactly 60 s old: out of the window
    decisions = [await gw.quota.admit(who, f"again-{i}", 0) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].rpm_remaining == 2
    assert decisions[3].retry_after_s == pytest.approx(30.0)  # when the first late one leaves


async def test_team_rpm_counts_every_key_and_headers_show_the_tightest_scope(gw: Instance) -> None:
    team = Limits(rpm=4)
    a, b = principal(Limits(rpm=10), team, key_id="a"), principal(Limits(rpm=2), team, key_id="b")
    first = await gw.quota.admit(a, "a1", 0)
    assert (first.rpm_limit, first.rpm_remaining, first.rpm_reset_s) == (4, 3, 60.0)  # team is tighter
    await gw.quota.admit(a, "a2", 0)
    b1 = await gw.quota.admit(b, "b1", 0)
    assert (b1.rpm_limit, b1.rpm_remaining) == (2, 1)  # tie at 1 left each: the key comes first
    assert (await gw.quota.admit(b, "b2", 0)).allowed
    assert ((d := await gw.quota.admit(a, "a3", 0)).reason, d.scope) == ("rpm", "team")
    assert ((d := await gw.quota.admit(b, "b3", 0)).reason, d.scope) == ("rpm", "key")  # key is checked first


async def test_no_limits_means_no_rate_headers(gw: Instance) -> None:
    assert await gw.quota.admit(principal(), "r", 5) == QuotaDecision(allowed=True)


# --- concurrency -----------------------------------------------------------------------------------------


async def test_concurrency_limit_until_a_settle_or_release(gw: Instance, clock: Clock) -> None:
    who = principal(key=Limits(concurrency=3))
    assert all([(await gw.quota.admit(who, f"r{i}", RESERVE)).allowed for i in range(3)])
    refused = await gw.quota.admit(who, "r3", RESERVE)
    assert (refused.allowed, refused.reason, refused.scope, refused.retry_after_s) == (False, "concurrency", "key", 1)

    await gw.quota.release(who, "r0")
    assert (await gw.quota.admit(who, "r3", RESERVE)).allowed
    assert not (await gw.quota.admit(who, "r4", RESERVE)).allowed
    assert await gw.ledger.settle(usage_record("r1", clock))
    assert (await gw.quota.admit(who, "r4", RESERVE)).allowed
    assert await in_flight(gw, "key-1") == await in_flight(gw) == 3


async def test_team_concurrency_spans_keys(gw: Instance) -> None:
    team = Limits(concurrency=2)
    assert (await gw.quota.admit(principal(team=team, key_id="a"), "a", 0)).allowed
    assert (await gw.quota.admit(principal(team=team, key_id="b"), "b", 0)).allowed
    refused = await gw.quota.admit(principal(team=team, key_id="c"), "c", 0)
    assert (refused.reason, refused.scope) == ("concurrency", "team")


async def test_slots_of_a_crashed_gateway_expire(make_instance: Callable[..., Instance], clock: Clock) -> None:
    gw = make_instance(slot_ttl_s=100.0, reservation_ttl_s=1000.0)
    await gw.redis.flushall()
    who = principal(team=Limits(concurrency=1))
    assert (await gw.quota.admit(who, "crashed", 0)).allowed
    clock.advance(99.9)
    assert not (await gw.quota.admit(who, "next", 0)).allowed
    clock.advance(0.1)
    assert (await gw.quota.admit(who, "next", 0)).allowed


# --- reservations ----------------------------------------------------------------------------------------


async def test_release_gives_back_the_reservation_and_slots(gw: Instance) -> None:
    who = principal(key=Limits(budget_micros=RESERVE), team=Limits(concurrency=5))
    assert (await gw.quota.admit(who, "r1", RESERVE)).allowed
    assert (await reserved(gw), await reserved(gw, "key:key-1"), await in_flight(gw)) == (RESERVE, RESERVE, 1)
    assert not (await gw.quota.admit(who, "r2", 1)).allowed

    await gw.quota.release(who, "r1")
    assert (await reserved(gw), await reserved(gw, "key:key-1"), await in_flight(gw)) == (0, 0, 0)
    assert await gw.redis.hgetall(keys.reservations("acme")) == {}
    assert (await gw.quota.admit(who, "r2", RESERVE)).allowed
    await gw.quota.release(who, "never-admitted")  # harmless
    assert await reserved(gw) == RESERVE


async def test_settle_releases_the_reservation_and_bills_instead(gw: Instance, clock: Clock) -> None:
    who = principal(team=Limits(budget_micros=3 * RESERVE, budget_period=Period.DAY))
    assert (await gw.quota.admit(who, "r1", RESERVE)).allowed
    assert (await gw.quota.admit(who, "r2", RESERVE)).budget_remaining_micros == RESERVE
    assert await gw.ledger.settle(usage_record("r1", clock, billed=5_000))
    assert await reserved(gw) == RESERVE
    decision = await gw.quota.admit(who, "r3", 0)
    assert decision.budget_remaining_micros == 3 * RESERVE - 5_000 - RESERVE


async def test_expired_reservations_are_purged(make_instance: Callable[..., Instance], clock: Clock) -> None:
    gw = make_instance(reservation_ttl_s=60.0)
    await gw.redis.flushall()
    who = principal(team=Limits(budget_micros=RESERVE))
    assert (await gw.quota.admit(who, "crashed", RESERVE)).allowed
    clock.advance(59)
    assert (await gw.quota.admit(who, "r2", RESERVE)).reason == "budget"
    clock.advance(1)
    assert (await gw.quota.admit(who, "r2", RESERVE)).allowed
    assert await gw.redis.hkeys(keys.reservations("acme")) == [b"r2"]
    assert await gw.redis.zrange(keys.reservation_expiry("acme"), 0, -1) == [b"r2"]
    assert (await reserved(gw), await reserved(gw, "key:key-1")) == (RESERVE, RESERVE)

    clock.advance(60)
    await gw.quota.release(who, "unrelated")  # release purges too
    assert await gw.redis.exists(keys.reserved_sums("acme")) == 0  # emptied fields are deleted


# --- all or nothing, idempotent --------------------------------------------------------------------------


async def test_a_refusal_changes_nothing(gw: Instance) -> None:
    who = principal(key=Limits(rpm=10, concurrency=10), team=Limits(budget_micros=RESERVE))
    assert (await gw.quota.admit(who, "r1", RESERVE)).allowed
    before = await snapshot(gw)
    refused = await gw.quota.admit(who, "r2", 1)  # passes rpm and concurrency, fails the team budget
    assert (refused.reason, refused.scope, refused.budget_remaining_micros) == ("budget", "team", 0)
    assert (refused.rpm_limit, refused.rpm_remaining) == (10, 9)
    assert await snapshot(gw) == before


async def test_admitting_the_same_request_again_takes_nothing_more(gw: Instance, clock: Clock) -> None:
    who = principal(key=Limits(rpm=1, concurrency=1, budget_micros=RESERVE))
    first = await gw.quota.admit(who, "r1", RESERVE)
    before = await snapshot(gw)
    clock.advance(1)
    again = await gw.quota.admit(who, "r1", RESERVE)  # a retry whose first reply was lost
    assert again == QuotaDecision(True, budget_remaining_micros=0, rpm_limit=1, rpm_remaining=0, rpm_reset_s=59.0)
    assert first.rpm_reset_s == 60.0
    assert await snapshot(gw) == before
    assert (await gw.quota.admit(who, "r2", 0)).reason == "rpm"


async def test_negative_reservations_are_rejected(gw: Instance) -> None:
    with pytest.raises(ValueError, match="reserve_micros"):
        await gw.quota.admit(principal(), "r", -1)


# --- budget periods --------------------------------------------------------------------------------------


async def test_a_new_utc_day_resets_a_daily_budget_but_not_monthly_or_total(gw: Instance, clock: Clock) -> None:
    clock.now = datetime(2026, 11, 30, 23, 59, tzinfo=UTC).timestamp()
    day = principal(key=Limits(budget_micros=RESERVE, budget_period=Period.DAY), key_id="daily")
    month = principal(key=Limits(budget_micros=RESERVE, budget_period=Period.MONTH), key_id="monthly")
    total = principal(team=Limits(budget_micros=3 * RESERVE, budget_period=Period.TOTAL), key_id="any")
    for who in (day, month):
        assert (await gw.quota.admit(who, f"{who.key_id}-1", RESERVE)).allowed
        assert await gw.ledger.settle(usage_record(f"{who.key_id}-1", clock, key_id=who.key_id, billed=RESERVE))
        assert (await gw.quota.admit(who, f"{who.key_id}-2", 1)).reason == "budget"

    clock.advance(60)  # 2026-12-01 00:00 UTC: a new day and a new month
    assert await gw.ledger.spend("acme", "daily", Period.DAY) == 0
    assert await gw.ledger.spend("acme", "monthly", Period.MONTH) == 0
    assert await gw.ledger.spend("acme", None, Period.TOTAL) == 2 * RESERVE
    assert (await gw.quota.admit(day, "daily-2", RESERVE)).allowed
    assert (await gw.quota.admit(month, "monthly-2", RESERVE)).allowed
    refused = await gw.quota.admit(total, "any-1", 1)  # the team's lifetime budget has 2 spent + 2 reserved
    assert (refused.reason, refused.scope, refused.budget_remaining_micros) == ("budget", "team", 0)
    assert (await gw.quota.admit(day, "daily-3", 1)).reason == "budget"  # its new reservation counts


# --- admin, round trips ----------------------------------------------------------------------------------


async def test_the_admin_team_has_no_limits_and_is_still_recorded(gw: Instance, clock: Clock) -> None:
    admin = Principal(team=ADMIN_TEAM, key_id="admin", is_admin=True)
    decisions = await asyncio.gather(*(gw.quota.admit(admin, f"a{i}", 10**9) for i in range(50)))
    assert all(d == QuotaDecision(allowed=True) for d in decisions)
    assert await gw.ledger.settle(usage_record("a0", clock, team=ADMIN_TEAM, key_id="admin", billed=7))
    assert await gw.ledger.spend(ADMIN_TEAM, None, Period.TOTAL) == 7
    assert [r.request_id for r in await gw.ledger.records(ADMIN_TEAM)] == ["a0"]


async def test_admit_and_release_are_one_round_trip_each(gw: Instance) -> None:
    who = principal(Limits(rpm=5, concurrency=5, budget_micros=10**6), Limits(rpm=5, concurrency=5))
    await gw.quota.admit(who, "warm", 1)  # loads the scripts into Redis's cache
    await gw.quota.release(who, "warm")

    before = gw.round_trips.count
    assert (await gw.quota.admit(who, "r1", 1)).allowed
    assert gw.round_trips.count - before == 1
    await gw.quota.release(who, "r1")
    assert gw.round_trips.count - before == 2


async def test_keys_carry_the_team_hash_tag(gw: Instance, clock: Clock) -> None:
    who = principal(Limits(budget_micros=10**6), Limits(budget_micros=10**6))
    await gw.quota.admit(who, "r1", 1)
    await gw.ledger.settle(usage_record("r1", clock))
    names = sorted(k.decode() for k in await gw.redis.keys("*"))
    assert [n for n in names if "{acme}" not in n] == [keys.USAGE_TEAMS]
    with pytest.raises(ValueError, match="braces"):
        keys.rate_window("a}b")
