"""UsageSpool and SpoolReplayer: durable appends, crash-safe replay, and exactly-once settling against real Redis."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.metering.records import UsageRecord
from gateway.metering.spool import SpoolReplayer, UsageSpool
from gateway.redis_server import EmbeddedRedis

# KEYS = marker, effects list; ARGV = request id. The test's stand-in ledger: applied at most once per id.
SETTLE_ONCE_LUA = """
if redis.call('SET', KEYS[1], '1', 'NX') then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def record(i: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"req-{i:04d}",
        ts_ms=1_700_000_000_000 + i,
        team="acme",
        key_id="key-1",
        model="flux.2-klein-4b",
        deployment="fal/flux.2-klein-4b",
        mode="generate",
        n=1,
        width=1024,
        height=1024,
        output_megapixels="1.048576",
        input_megapixels="0",
        billed_micros=14_000 + i,
        provider_cost_micros=14_000 + i,
        attempts=1,
        attempts_json='[{"deployment":"fal/flux.2-klein-4b","outcome":"success"}]',
        latency_ms=900,
        outcome="ok",
        reserved_micros=20_000,
    )


@dataclass
class FakeLedger:
    """Records settle calls; raises RedisError from call number `fail_at` on while `failing` (1-based)."""

    fail_at: int | None = None
    calls: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)

    async def settle(self, rec: UsageRecord) -> bool:
        self.calls.append(rec.request_id)
        if self.fail_at is not None and len(self.calls) >= self.fail_at:
            raise RedisConnectionError("Redis is down")
        first = rec.request_id not in self.settled
        if first:
            self.settled.append(rec.request_id)
        return first


@dataclass
class RedisLedger:
    """A real Redis-backed settle: SET NX on the request id, and each applied effect pushed onto a list."""

    redis: Redis
    crash_after: int | None = None  # settled calls before a simulated process crash
    calls: int = 0

    async def settle(self, rec: UsageRecord) -> bool:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise ProcessCrash
        self.calls += 1
        script = self.redis.register_script(SETTLE_ONCE_LUA)
        return bool(await script(keys=[f"settled:{rec.request_id}", "effects"], args=[rec.request_id]))

    async def effects(self) -> list[str]:
        return [item.decode() for item in await self.redis.lrange("effects", 0, -1)]


class ProcessCrash(BaseException):
    """Stands in for the process dying: nothing after it runs (not even `except Exception`)."""


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


@pytest.fixture
def spool(tmp_path: Path) -> UsageSpool:
    return UsageSpool(tmp_path / "spool")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server of its own (AOF on, so a test can stop and restart it without losing settled ids)."""
    with EmbeddedRedis(tmp_path / "redis", appendonly=True) as server:
        yield server


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose(close_connection_pool=True)


# --- appending ---------------------------------------------------------------------------------------------


async def test_append_is_fsynced_and_survives_a_new_spool_object(
    spool: UsageSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])

    for i in range(3):
        before = len(fsynced)
        await spool.append(record(i))
        assert len(fsynced) > before  # fsynced before append returned

    reopened = UsageSpool(spool.directory)
    assert reopened.pending() == 3
    stored = [UsageRecord.from_fields(orjson.loads(line)) for line in lines(reopened.spool_path)]
    assert [r.to_fields() for r in stored] == [record(i).to_fields() for i in range(3)]


async def test_concurrent_appends_land_as_whole_lines(spool: UsageSpool) -> None:
    await asyncio.gather(*(spool.append(record(i)) for i in range(200)))

    stored = [UsageRecord.from_fields(orjson.loads(line)).to_fields() for line in lines(spool.spool_path)]
    assert sorted(stored, key=lambda r: r["request_id"]) == [record(i).to_fields() for i in range(200)]
    assert spool.pending() == 200


async def test_a_cancelled_append_still_lands_whole_before_a_replay_takes_the_file(spool: UsageSpool) -> None:
    task = asyncio.create_task(spool.append(record(0)))
    await asyncio.sleep(0)  # the append has started (its write is under way)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ledger = FakeLedger()

    # the replay waits for the spool lock, which the shielded write holds until its line is on disk
    assert await SpoolReplayer(spool, ledger.settle).replay_once() == 1
    assert ledger.calls == ["req-0000"]


# --- replaying ---------------------------------------------------------------------------------------------


async def test_replay_settles_everything_in_order_and_empties_the_spool(spool: UsageSpool) -> None:
    ledger = FakeLedger()
    for i in range(5):
        await spool.append(record(i))

    assert await SpoolReplayer(spool, ledger.settle).replay_once() == 5

    assert ledger.calls == [f"req-{i:04d}" for i in range(5)]
    assert spool.pending() == 0
    assert not spool.spool_path.exists()
    assert not spool.replaying_path.exists()
    assert await SpoolReplayer(spool, ledger.settle).replay_once() == 0  # nothing left: no settle calls
    assert len(ledger.calls) == 5


async def test_redis_failure_midway_keeps_the_rest_for_a_later_replay(spool: UsageSpool) -> None:
    ledger = FakeLedger(fail_at=3)
    for i in range(5):
        await spool.append(record(i))
    replayer = SpoolReplayer(spool, ledger.settle)

    assert await replayer.replay_once() == 2
    assert spool.pending() == 3  # the failed record and the two after it
    assert spool.replaying_path.exists()

    ledger.fail_at = None
    assert await replayer.replay_once() == 3
    assert ledger.settled == [f"req-{i:04d}" for i in range(5)]
    assert spool.pending() == 0


async def test_leftover_batch_is_replayed_before_newer_appends(spool: UsageSpool) -> None:
    spool.replaying_path.write_bytes(orjson.dumps(record(0).to_fields()) + b"\n")  # a replay that died
    await spool.append(record(1))
    ledger = FakeLedger()
    replayer = SpoolReplayer(spool, ledger.settle)

    assert spool.pending() == 2
    assert await replayer.replay_once() == 1
    assert await replayer.replay_once() == 1
    assert ledger.calls == ["req-0000", "req-0001"]


async def test_crash_mid_replay_then_restart_settles_each_record_exactly_once(spool: UsageSpool, redis: Redis) -> None:
    for i in range(6):
        await spool.append(record(i))
    crashing = RedisLedger(redis, crash_after=3)
    with pytest.raises(ProcessCrash):
        await SpoolReplayer(spool, crashing.settle).replay_once()
    assert await crashing.effects() == ["req-0000", "req-0001", "req-0002"]
    assert spool.pending() == 6  # the whole batch is still on disk: the crash came before any cleanup

    # a new process on the same directory: it replays the leftover batch first, the ledger deduplicates
    restarted = UsageSpool(spool.directory)
    ledger = RedisLedger(redis)
    assert await SpoolReplayer(restarted, ledger.settle).replay_once() == 6

    assert await ledger.effects() == [f"req-{i:04d}" for i in range(6)]  # each applied exactly once
    assert restarted.pending() == 0


async def test_redis_outage_mid_replay_then_recovery_settles_each_record_exactly_once(
    spool: UsageSpool, redis_server: EmbeddedRedis, redis: Redis
) -> None:
    for i in range(6):
        await spool.append(record(i))
    ledger = RedisLedger(redis)

    async def settle_then_lose_redis(rec: UsageRecord) -> bool:
        if ledger.calls == 3:
            redis_server.stop()  # SIGTERM: the AOF keeps the three settled ids
        return await ledger.settle(rec)

    assert await SpoolReplayer(spool, settle_then_lose_redis).replay_once() == 3
    assert spool.pending() == 3

    redis_server.start()  # same port and data directory
    assert await SpoolReplayer(spool, ledger.settle).replay_once() == 3
    assert await ledger.effects() == [f"req-{i:04d}" for i in range(6)]
    assert spool.pending() == 0


async def test_torn_last_line_goes_to_corrupt_and_the_next_append_is_kept(
    spool: UsageSpool, caplog: pytest.LogCaptureFixture
) -> None:
    await spool.append(record(0))
    torn = orjson.dumps(record(1).to_fields())[:40]
    spool.spool_path.write_bytes(spool.spool_path.read_bytes() + torn)  # a crash mid-append: half a record
    await spool.append(record(2))  # must not be glued onto the torn line
    ledger = FakeLedger()

    with caplog.at_level(logging.ERROR, logger="gateway.metering.spool"):
        assert await SpoolReplayer(spool, ledger.settle).replay_once() == 2

    assert ledger.calls == ["req-0000", "req-0002"]
    assert lines(spool.corrupt_path) == [torn]
    assert any("corrupt usage spool line" in r.getMessage() for r in caplog.records)
    assert spool.pending() == 0


async def test_appends_during_a_replay_are_kept_for_the_next_one(spool: UsageSpool) -> None:
    for i in range(3):
        await spool.append(record(i))
    ledger = FakeLedger()
    new_ids = itertools.count(100)

    async def settle_while_appending(rec: UsageRecord) -> bool:
        # new usage arrives (Redis still flaky) while the batch is being settled
        await asyncio.gather(*(spool.append(record(next(new_ids))) for _ in range(2)))
        return await ledger.settle(rec)

    assert await SpoolReplayer(spool, settle_while_appending).replay_once() == 3
    assert spool.pending() == 6

    assert await SpoolReplayer(spool, ledger.settle).replay_once() == 6
    assert sorted(ledger.settled) == [f"req-{i:04d}" for i in [0, 1, 2, *range(100, 106)]]
    assert spool.pending() == 0


async def test_run_retries_until_settled_and_stops_on_cancel(spool: UsageSpool) -> None:
    ledger = FakeLedger(fail_at=1)
    replayer = SpoolReplayer(spool, ledger.settle, interval_s=0.01)
    task = asyncio.create_task(replayer.run())
    await spool.append(record(0))
    await spool.append(record(1))

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        pytest.fail("the replay loop did not get there within 5 s")

    await until(lambda: len(ledger.calls) >= 2)  # it kept trying while Redis was down
    ledger.fail_at = None
    await until(lambda: ledger.settled == ["req-0000", "req-0001"])
    await spool.append(record(2))
    await until(lambda: ledger.settled[-1:] == ["req-0002"])
    assert spool.pending() == 0

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
