"""Admission in Redis: rate limits, concurrency and budget reservation, atomic across gateway instances.

`Quota.admit` is one Lua script (one round trip): it checks a request against its key's and its team's
limits and, only if every check passes, counts it in both rpm windows, takes both concurrency slots and
reserves its worst-case cost. `Ledger.settle` gives the slots and the reservation back when the request's
usage record lands; `Quota.release` does it for a request that reached no provider. Times come from the
caller's clock, not Redis TIME, so every instance and every test decides on the same time base.

Crash safety: a gateway that dies mid-request never settles, so its concurrency slots expire `slot_ttl_s`
after admission and its reservation `reservation_ttl_s` after; expired reservations are purged (and taken
off the reserved sums) at the start of every admit, release and settle. Key-level TTLs only collect idle
teams' keys: they outlast every entry inside by GC_SLACK_S, so clock skew cannot drop a live entry.
Key layout: `gateway.metering.keys`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.accounts.principal import Principal
from gateway.metering import keys

WINDOW_S = 60.0  # the rpm window
GC_SLACK_S = 3600.0  # how long a key outlives the newest entry it holds
PURGE_BATCH = 256  # expired reservations purged per call; a backlog drains over the next calls

# Lua shared by every script that touches reservations. `release_reservation` drops one entry and takes its
# amount off the team's and its key's reserved sums; `purge` does that for every entry expired by `now`.
RESERVATION_LUA = f"""
local function subtract(sums, field, amount)
  if redis.call('HINCRBY', sums, field, -amount) <= 0 then redis.call('HDEL', sums, field) end
end
local function release_reservation(resv, exp, sums, id)
  local entry = redis.call('HGET', resv, id)
  if entry then
    local kid, amount = string.match(entry, '^(.*)|(%d+)$')
    amount = tonumber(amount)
    if amount and amount > 0 then
      subtract(sums, 'team', amount)
      subtract(sums, 'key:' .. kid, amount)
    end
    redis.call('HDEL', resv, id)
  end
  redis.call('ZREM', exp, id)
end
local function purge(resv, exp, sums, now)
  local ids = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, {PURGE_BATCH})
  for _, id in ipairs(ids) do release_reservation(resv, exp, sums, id) end
end
"""

# KEYS = rl key, rl team, cc key, cc team, resv, resv exp, resv sum, spend bucket of the key's budget
# period, spend bucket of the team's; ARGV = now, request id, key id, reserve, key rpm, team rpm,
# key concurrency, team concurrency, key budget, team budget ('' = unlimited), window, slot ttl,
# reservation ttl, gc slack. Returns {allowed, reason, scope, retry_after, budget_remaining, rpm_limit,
# rpm_remaining, rpm_reset}; false where there is no value.
ADMIT_LUA = (
    RESERVATION_LUA
    + """
local now, id, kid, reserve = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local window, slot_ttl, resv_ttl, slack = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]),
  tonumber(ARGV[14])
local sums = KEYS[7]
local scopes = {
  {name = 'key', rl = KEYS[1], cc = KEYS[3], spend = KEYS[8], field = 'key:' .. kid,
   rpm = tonumber(ARGV[5]), conc = tonumber(ARGV[7]), budget = tonumber(ARGV[9])},
  {name = 'team', rl = KEYS[2], cc = KEYS[4], spend = KEYS[9], field = 'team',
   rpm = tonumber(ARGV[6]), conc = tonumber(ARGV[8]), budget = tonumber(ARGV[10])},
}
local function fmt(x) return string.format('%.17g', x) end

purge(KEYS[5], KEYS[6], sums, now)
for _, s in ipairs(scopes) do
  redis.call('ZREMRANGEBYSCORE', s.rl, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', s.cc, '-inf', now)
end

local function reset_in(s)
  local oldest = redis.call('ZRANGE', s.rl, 0, 0, 'WITHSCORES')
  if oldest[2] then return tonumber(oldest[2]) + window - now end
  return window
end
local function budget_left(s)
  local spent = tonumber(redis.call('HGET', s.spend, s.field)) or 0
  local reserved = tonumber(redis.call('HGET', sums, s.field)) or 0
  return s.budget - spent - reserved
end
-- the rpm scope with the fewest requests left, for x-ratelimit-* headers
local function reply(allowed, reason, scope, retry, remaining, rpm_scopes)
  local best, best_left = nil, nil
  for _, s in ipairs(rpm_scopes) do
    if s.rpm then
      local left = s.rpm - redis.call('ZCARD', s.rl)
      if best == nil or left < best_left then best, best_left = s, left end
    end
  end
  if best == nil then return {allowed, reason, scope, retry, remaining, false, false, false} end
  return {allowed, reason, scope, retry, remaining, best.rpm, math.max(best_left, 0), fmt(reset_in(best))}
end

-- a retry of an admission whose reply was lost: it holds its slots and reservation already
if redis.call('HEXISTS', KEYS[5], id) == 0 then
  for _, s in ipairs(scopes) do
    if s.rpm and redis.call('ZCARD', s.rl) >= s.rpm then
      return reply(0, 'rpm', s.name, fmt(reset_in(s)), false, {s})
    end
  end
  for _, s in ipairs(scopes) do
    if s.conc and redis.call('ZCARD', s.cc) >= s.conc then
      return reply(0, 'concurrency', s.name, '1', false, scopes)
    end
  end
  for _, s in ipairs(scopes) do
    if s.budget then
      local left = budget_left(s)
      if left < reserve then return reply(0, 'budget', s.name, false, math.max(left, 0), scopes) end
    end
  end
  for _, s in ipairs(scopes) do
    redis.call('ZADD', s.rl, now, id)
    redis.call('EXPIRE', s.rl, math.ceil(window + slack))
    redis.call('ZADD', s.cc, now + slot_ttl, id)
    redis.call('EXPIRE', s.cc, math.ceil(slot_ttl + slack))
    if reserve > 0 then redis.call('HINCRBY', sums, s.field, reserve) end
  end
  -- the entry is written even for 0 micros: it is what marks the request as admitted
  redis.call('HSET', KEYS[5], id, kid .. '|' .. ARGV[4])
  redis.call('ZADD', KEYS[6], now + resv_ttl, id)
  for i = 5, 7 do redis.call('EXPIRE', KEYS[i], math.ceil(resv_ttl + slack)) end
end

local tightest = false
for _, s in ipairs(scopes) do
  if s.budget then
    local left = math.max(budget_left(s), 0)
    if tightest == false or left < tightest then tightest = left end
  end
end
return reply(1, false, false, false, tightest, scopes)
"""
)

# KEYS = cc key, cc team, resv, resv exp, resv sum; ARGV = now, request id.
RELEASE_LUA = (
    RESERVATION_LUA
    + """
purge(KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[1]))
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
release_reservation(KEYS[3], KEYS[4], KEYS[5], ARGV[2])
return 0
"""
)


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """The outcome of one admission, with what the x-ratelimit-* headers and a 429 need."""

    allowed: bool
    reason: str | None = None  # "rpm" | "concurrency" | "budget"
    scope: str | None = None  # "key" | "team"
    retry_after_s: float | None = None  # rpm: until the oldest request leaves the window; concurrency: 1
    budget_remaining_micros: int | None = None  # of the scope that refused (budget), or the tightest budget
    rpm_limit: int | None = None  # of the tightest rpm scope
    rpm_remaining: int | None = None
    rpm_reset_s: float | None = None


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _float(value: bytes | str | None) -> float | None:
    return None if value is None else float(value)


def _int(value: int | None) -> int | None:
    return None if value is None else int(value)


def _arg(limit: int | None) -> str:
    return "" if limit is None else str(int(limit))


class Quota:
    """Admission control against a principal's key and team limits, shared by every gateway instance."""

    def __init__(
        self,
        redis: Redis,
        *,
        clock: Callable[[], float] = time.time,
        slot_ttl_s: float = 600.0,
        reservation_ttl_s: float = 600.0,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._slot_ttl_s = slot_ttl_s
        self._reservation_ttl_s = reservation_ttl_s
        self._admit_script = redis.register_script(ADMIT_LUA)
        self._release_script = redis.register_script(RELEASE_LUA)

    async def admit(self, principal: Principal, request_id: str, reserve_micros: int) -> QuotaDecision:
        """Check key rpm, team rpm, key and team concurrency, key and team budget; take all or nothing."""
        if reserve_micros < 0:
            raise ValueError(f"reserve_micros must be >= 0, not {reserve_micros}")
        now = self._clock()
        team, kid = principal.team, principal.key_id
        key_limits, team_limits = principal.key_limits, principal.team_limits
        redis_keys = [
            keys.rate_window(team, kid),
            keys.rate_window(team),
            keys.concurrency(team, kid),
            keys.concurrency(team),
            keys.reservations(team),
            keys.reservation_expiry(team),
            keys.reserved_sums(team),
            keys.spend(team, key_limits.budget_period, now),
            keys.spend(team, team_limits.budget_period, now),
        ]
        args = [
            repr(float(now)), request_id, kid, int(reserve_micros),
            _arg(key_limits.rpm), _arg(team_limits.rpm),
            _arg(key_limits.concurrency), _arg(team_limits.concurrency),
            _arg(key_limits.budget_micros), _arg(team_limits.budget_micros),
            WINDOW_S, self._slot_ttl_s, self._reservation_ttl_s, GC_SLACK_S,
        ]  # fmt: skip
        reply = await self._admit_script(keys=redis_keys, args=args)
        allowed, reason, scope, retry, remaining, rpm_limit, rpm_remaining, rpm_reset = reply
        return QuotaDecision(
            allowed=bool(allowed),
            reason=_text(reason),
            scope=_text(scope),
            retry_after_s=_float(retry),
            budget_remaining_micros=_int(remaining),
            rpm_limit=_int(rpm_limit),
            rpm_remaining=_int(rpm_remaining),
            rpm_reset_s=_float(rpm_reset),
        )

    async def release(self, principal: Principal, request_id: str) -> None:
        """Give back the slots and reservation of a request that reached no provider (it has no record)."""
        team = principal.team
        redis_keys = [
            keys.concurrency(team, principal.key_id),
            keys.concurrency(team),
            keys.reservations(team),
            keys.reservation_expiry(team),
            keys.reserved_sums(team),
        ]
        await self._release_script(keys=redis_keys, args=[repr(float(self._clock())), request_id])
