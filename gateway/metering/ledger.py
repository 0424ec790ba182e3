"""The ledger: settles each request's usage record exactly once, and answers usage and spend queries.

`Ledger.settle` is one Lua script (one round trip, atomic): unless the request id was settled already, it
releases the request's concurrency slots and budget reservation, adds its billed micro-USD to the team's
and key's day, month and total spend, appends the record to the team's usage stream and adds it to the day
counters. A spool replay or a retry of a settle whose reply was lost can never count a record twice.

Exactly once, for how long: settled ids stay in `usage:{T}:seen` for SEEN_TTL_S after their settle. A
record whose ts_ms is older than SETTLE_HORIZON_S is refused (logged, returns False), so every record that
is accepted would still find its earlier settle there (one day of margin for clock skew between
instances). Stream entry ids are settle times from the caller's clock, and a record is settled less than
SETTLE_HORIZON_S after its ts_ms, which bounds the stream range `records()` reads.

Retention: usage streams and day counters are the billing history and never expire; spend buckets only
serve budgets (day buckets expire after 40 days, month buckets after 400, totals never).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from redis.asyncio import Redis

from gateway.accounts.principal import Period
from gateway.metering import keys
from gateway.metering.quota import RESERVATION_LUA
from gateway.metering.records import UsageRecord

log = logging.getLogger("gateway.metering.ledger")

DAY_S = 86_400
SETTLE_HORIZON_S = 35 * DAY_S
SEEN_TTL_S = SETTLE_HORIZON_S + DAY_S
SPEND_DAY_TTL_S = 40 * DAY_S
SPEND_MONTH_TTL_S = 400 * DAY_S
CLOCK_SKEW_MS = 5 * 60 * 1000  # between instances' clocks, allowed for when reading the stream by time
PAGE = 1000  # stream entries per XRANGE
GROUPS = ("team", "day", *keys.DIMENSIONS)

# KEYS = cc key, cc team, resv, resv exp, resv sum, spend day, spend month, spend total, usage stream,
# usage day, seen, usage:teams; ARGV = now (s), request id, team, key id, billed, provider cost,
# output mp micro, input mp micro, model, deployment, seen ttl, spend day ttl, spend month ttl, then the
# record's stream fields as name, value pairs. Returns 1 if settled now, 0 if it had been already.
SETTLE_LUA = (
    RESERVATION_LUA
    + """
local now = tonumber(ARGV[1])
local id, team, kid = ARGV[2], ARGV[3], ARGV[4]
local stream, seen = KEYS[9], KEYS[11]
local now_ms = math.floor(now * 1000)
purge(KEYS[3], KEYS[4], KEYS[5], now)
redis.call('ZREMRANGEBYSCORE', seen, '-inf', now_ms - tonumber(ARGV[11]) * 1000)
if redis.call('ZSCORE', seen, id) then return 0 end

-- the stream first: it is the only write that can fail, and a failed script keeps its earlier writes.
-- Entry ids follow the caller's clock (kept increasing), like every other time in these keys.
local id_ms, seq = now_ms, 0
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
if last[1] then
  local last_ms, last_seq = string.match(last[1][1], '^(%d+)-(%d+)$')
  if tonumber(last_ms) >= now_ms then id_ms, seq = tonumber(last_ms), tonumber(last_seq) + 1 end
end
local fields = {}
for i = 14, #ARGV do fields[#fields + 1] = ARGV[i] end
local added = redis.pcall('XADD', stream, string.format('%d-%d', id_ms, seq), unpack(fields))
-- an entry deleted from the top leaves a higher last id behind: let Redis pick one above it
if type(added) == 'table' and added.err then redis.call('XADD', stream, '*', unpack(fields)) end

redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[2], id)
release_reservation(KEYS[3], KEYS[4], KEYS[5], id)

if ARGV[5] ~= '0' then
  for i = 6, 8 do
    redis.call('HINCRBY', KEYS[i], 'team', ARGV[5])
    redis.call('HINCRBY', KEYS[i], 'key:' .. kid, ARGV[5])
  end
  redis.call('EXPIRE', KEYS[6], ARGV[12])
  redis.call('EXPIRE', KEYS[7], ARGV[13])
end

local names = {'requests', 'billed_micros', 'provider_cost_micros', 'output_mp_micro', 'input_mp_micro'}
local values = {'1', ARGV[5], ARGV[6], ARGV[7], ARGV[8]}
for _, prefix in ipairs({'', 'key:' .. kid .. ':', 'model:' .. ARGV[9] .. ':', 'deployment:' .. ARGV[10] .. ':'}) do
  for i, name in ipairs(names) do
    if values[i] ~= '0' then redis.call('HINCRBY', KEYS[10], prefix .. name, values[i]) end
  end
end

redis.call('ZADD', seen, now_ms, id)
redis.call('EXPIRE', seen, ARGV[11])
redis.call('SADD', KEYS[12], team)
return 1
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def mp_micro(megapixels: str) -> int:
    """A record's decimal megapixel string as an integer count of micro-megapixels."""
    return int((Decimal(megapixels) * 1_000_000).to_integral_value(rounding=ROUND_HALF_UP))


class Ledger:
    """Exactly-once settlement of usage records, and the usage and spend they add up to."""

    def __init__(self, redis: Redis, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock
        self._settle_script = redis.register_script(SETTLE_LUA)

    async def settle(self, record: UsageRecord) -> bool:
        """Apply `record` once: True if it counted now, False if it had already (or is too old to dedupe)."""
        if record.billed_micros < 0 or record.provider_cost_micros < 0:
            raise ValueError(f"usage record {record.request_id} has a negative amount")
        now = self._clock()
        if record.ts_ms < (now - SETTLE_HORIZON_S) * 1000:
            # its first settle, if any, may have left the dedupe set: counting it again could double-bill
            log.error(
                "usage record %s of team %s not settled: ts_ms %d is older than the %d-day dedupe horizon",
                record.request_id, record.team, record.ts_ms, SETTLE_HORIZON_S // DAY_S,
            )  # fmt: skip
            return False
        team, kid = record.team, record.key_id
        ts_s = record.ts_ms / 1000
        redis_keys = [
            keys.concurrency(team, kid),
            keys.concurrency(team),
            keys.reservations(team),
            keys.reservation_expiry(team),
            keys.reserved_sums(team),
            keys.spend(team, Period.DAY, ts_s),
            keys.spend(team, Period.MONTH, ts_s),
            keys.spend(team, Period.TOTAL, ts_s),
            keys.usage_stream(team),
            keys.usage_day(team, keys.utc_day(ts_s)),
            keys.usage_seen(team),
            keys.USAGE_TEAMS,
        ]
        args: list[str | int | float] = [
            repr(float(now)), record.request_id, team, kid,
            int(record.billed_micros), int(record.provider_cost_micros),
            mp_micro(record.output_megapixels), mp_micro(record.input_megapixels),
            record.model, record.deployment, SEEN_TTL_S, SPEND_DAY_TTL_S, SPEND_MONTH_TTL_S,
        ]  # fmt: skip
        for name, value in record.to_fields().items():
            args += [name, value]
        return bool(await self._settle_script(keys=redis_keys, args=args))

    async def records(
        self, team: str, start_ms: int | None = None, end_ms: int | None = None, limit: int = 10_000
    ) -> list[UsageRecord]:
        """A team's records with start_ms <= ts_ms < end_ms, in settle order, at most `limit`."""
        stream = keys.usage_stream(team)
        low = "-" if start_ms is None else str(max(0, start_ms - CLOCK_SKEW_MS))
        # a record is settled within SETTLE_HORIZON_S of its ts_ms, so no later entry can be in range
        high = "+" if end_ms is None else str(end_ms + SETTLE_HORIZON_S * 1000 + CLOCK_SKEW_MS)
        found: list[UsageRecord] = []
        while len(found) < limit:
            entries = await self._redis.xrange(stream, min=low, max=high, count=PAGE)
            for _, fields in entries:
                record = UsageRecord.from_fields(fields)
                if (start_ms is None or record.ts_ms >= start_ms) and (end_ms is None or record.ts_ms < end_ms):
                    found.append(record)
                    if len(found) == limit:
                        break
            if len(entries) < PAGE:
                break
            low = "(" + _text(entries[-1][0])
        return found

    async def summary(
        self, teams: Sequence[str] | None, start_day: date, end_day: date, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Usage rows for the UTC days start_day..end_day (inclusive) from the day counters, grouped."""
        unknown = [g for g in group_by if g not in GROUPS]
        if unknown:
            raise ValueError(f"cannot group usage by {unknown}; choose from {GROUPS}")
        dimensions = [g for g in group_by if g in keys.DIMENSIONS]
        if len(dimensions) > 1:
            # the day counters are kept per key, per model and per deployment, never per combination
            raise ValueError(f"usage can be grouped by at most one of {keys.DIMENSIONS}, not {dimensions}")
        dimension = dimensions[0] if dimensions else None
        if teams is None:
            teams = sorted(_text(t) for t in await self._redis.smembers(keys.USAGE_TEAMS))
        days = [start_day + timedelta(days=i) for i in range((end_day - start_day).days + 1)]
        cells = [(team, day) for team in dict.fromkeys(teams) for day in days]
        hashes: list[dict[Any, Any]] = []
        if cells:
            async with self._redis.pipeline(transaction=False) as pipe:
                for team, day in cells:
                    pipe.hgetall(keys.usage_day(team, day))
                hashes = await pipe.execute()

        totals: dict[tuple[str, ...], dict[str, int]] = {}
        if not group_by:
            totals[()] = dict.fromkeys(keys.COUNTERS, 0)
        for (team, day), counters in zip(cells, hashes, strict=True):
            labels = {"team": team, "day": day.isoformat()}
            for raw_field, raw_value in counters.items():
                field = _text(raw_field)
                prefix, _, rest = field.partition(":")
                if dimension is None:
                    if rest:  # a per-key, per-model or per-deployment counter
                        continue
                    name = field
                else:
                    if prefix != dimension:
                        continue
                    # values may contain ':' (model ids, deployment keys), counter names never do
                    labels[dimension], _, name = rest.rpartition(":")
                group = tuple(labels[g] for g in group_by)
                row = totals.setdefault(group, dict.fromkeys(keys.COUNTERS, 0))
                row[name] = row.get(name, 0) + int(raw_value)
        return [_row(group_by, group, counters) for group, counters in sorted(totals.items())]

    async def spend(self, team: str, key_id: str | None, period: Period) -> int:
        """Billed micro-USD of a team (key_id None) or one of its keys in the current UTC period bucket."""
        value = await self._redis.hget(keys.spend(team, period, self._clock()), keys.scope_field(key_id))
        return int(value or 0)


def _row(group_by: Sequence[str], group: tuple[str, ...], counters: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = dict(zip(group_by, group, strict=True))
    row["requests"] = counters["requests"]
    row["billed_micros"] = counters["billed_micros"]
    row["provider_cost_micros"] = counters["provider_cost_micros"]
    row["output_megapixels"] = counters["output_mp_micro"] / 1_000_000
    row["input_megapixels"] = counters["input_mp_micro"] / 1_000_000
    return row
