"""Shared deployment health in Redis: breaker, 429 cool-down, success window and latency per deployment.

Every gateway instance reads and updates the same hashes, so a breaker one instance opens is honoured by all.
Each update is one Lua script (atomic, one round trip); times come from the caller's clock, not Redis TIME,
so every instance and every test decides on the same time base.

Layout: one hash per deployment, `{prefix}:{<deployment key>}` (a hash tag, ready for Redis Cluster), with
state, retry_at, consecutive_failures, probes_in_flight, probe_started_at, half_open_successes, window_start,
window_successes, window_failures, latency_mean, latency_var, latency_samples; it expires 7 days after the
last write, so deployments removed from the catalog leave nothing behind.

Probe slots self-heal: a gateway that dies mid-probe never releases its slot, so once the newest slot is
`open_s` old every slot counts as free again (a live probe slower than that may overlap one new probe).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.routing.health import AttemptOutcome, BreakerPolicy, BreakerState, DeploymentHealth

log = logging.getLogger("gateway.health_store")

STATE_TTL_S = 7 * 24 * 3600
P95_Z = 1.645  # one-sided 95% point of a normal distribution
# OSError covers the builtin TimeoutError and refused or reset connections outside redis-py's own errors.
_REDIS_ERRORS = (RedisError, OSError)

# KEYS[1] = hash; ARGV = now, half_open_probes, open_s, ttl_s. Returns 1 if the caller may send (a probe).
ACQUIRE_PROBE_LUA = """
local f = redis.call('HMGET', KEYS[1], 'state', 'retry_at', 'probes_in_flight', 'probe_started_at')
local state = f[1] or 'closed'
if state == 'closed' then return 1 end
local now, max_probes, open_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if state == 'open' then
  if now < (tonumber(f[2]) or 0) then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'half_open_successes', 0)
end
local probes = tonumber(f[3]) or 0
-- a slot whose holder never reported back (a gateway died mid-probe) is free once the newest is open_s old
if probes > 0 and now >= (tonumber(f[4]) or 0) + open_s then probes = 0 end
local granted = 0
if probes < max_probes then
  redis.call('HSET', KEYS[1], 'probes_in_flight', probes + 1, 'probe_started_at', string.format('%.17g', now))
  granted = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return granted
"""

# KEYS[1] = hash. Gives back a slot taken for an attempt that was never made; never creates the hash.
RELEASE_PROBE_LUA = """
local probes = tonumber(redis.call('HGET', KEYS[1], 'probes_in_flight'))
if probes and probes > 0 then redis.call('HSET', KEYS[1], 'probes_in_flight', probes - 1) end
return 0
"""

# KEYS[1] = hash; ARGV = now, outcome, elapsed_s, megapixels, cooldown_s, probe (0/1), consecutive_failures,
# window_s, min_requests, failure_rate, open_s, successes_to_close, auth_open_s, latency_alpha, ttl_s.
# Returns {state before, state after}.
RECORD_LUA = """
local h = {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local function num(field) return tonumber(h[field]) or 0 end
local now, outcome = tonumber(ARGV[1]), ARGV[2]
local elapsed, mp, cooldown = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_failures, window_s, min_requests = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local failure_rate, open_s, to_close = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local auth_open_s, alpha = tonumber(ARGV[13]), tonumber(ARGV[14])

local before = h.state or 'closed'
local state, retry_at, consecutive = before, num('retry_at'), num('consecutive_failures')
local probes, successes = num('probes_in_flight'), num('half_open_successes')
local window_start, w_ok, w_fail = num('window_start'), num('window_successes'), num('window_failures')
local mean, var, samples = num('latency_mean'), num('latency_var'), num('latency_samples')

if ARGV[6] == '1' then probes = math.max(0, probes - 1) end
if now >= window_start + window_s then window_start, w_ok, w_fail = now, 0, 0 end
-- never shortens a later retry_at (a longer 429 cool-down or auth ejection stands)
local function open_until(t) state, retry_at, successes = 'open', math.max(retry_at, t), 0 end

if outcome == 'success' then
  w_ok, consecutive = w_ok + 1, 0
  if mp > 0 then
    local x = elapsed / mp
    if samples == 0 then
      mean, var = x, 0
    else
      local d = x - mean
      mean = mean + alpha * d
      var = (1 - alpha) * (var + alpha * d * d)
    end
    samples = samples + 1
  end
  if state == 'half_open' then
    successes = successes + 1
    if successes >= to_close then
      -- a fresh start: the failures that opened the breaker must not count against it again
      state, retry_at, consecutive, successes, probes = 'closed', 0, 0, 0, 0
      window_start, w_ok, w_fail = now, 0, 0
    end
  end
else
  w_fail, consecutive = w_fail + 1, consecutive + 1
  local total = w_ok + w_fail
  if outcome == 'auth_failure' then
    open_until(now + auth_open_s)
  elseif state == 'half_open' then
    open_until(now + open_s)
  elseif state == 'closed' and (consecutive >= max_failures
      or (total >= min_requests and w_fail >= failure_rate * total)) then
    open_until(now + open_s)
  end
  if outcome == 'rate_limited' then retry_at = math.max(retry_at, now + cooldown) end
end

local function fmt(x) return string.format('%.17g', x) end
redis.call('HSET', KEYS[1], 'state', state, 'retry_at', fmt(retry_at), 'consecutive_failures', consecutive,
  'probes_in_flight', probes, 'half_open_successes', successes, 'window_start', fmt(window_start),
  'window_successes', w_ok, 'window_failures', w_fail, 'latency_mean', fmt(mean), 'latency_var', fmt(var),
  'latency_samples', samples)
redis.call('EXPIRE', KEYS[1], ARGV[15])
return {before, state, redis.call('HGETALL', KEYS[1])}
"""


class _Cached(NamedTuple):
    fetched_at: float  # -inf: invalidated, kept only as the last known value for Redis outages
    health: DeploymentHealth


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class HealthStore:
    """Shared deployment health in Redis."""

    def __init__(
        self,
        redis: Redis,
        policy: BreakerPolicy,
        *,
        cache_ttl_s: float = 0.25,
        clock: Callable[[], float] = time.time,
        key_prefix: str = "health",
    ) -> None:
        self._redis = redis
        self._policy = policy
        self._cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._key_prefix = key_prefix
        self._cache: dict[str, _Cached] = {}
        self._acquire_script = redis.register_script(ACQUIRE_PROBE_LUA)
        self._release_script = redis.register_script(RELEASE_PROBE_LUA)
        self._record_script = redis.register_script(RECORD_LUA)

    def redis_key(self, key: str) -> str:
        """The Redis hash of one deployment."""
        return f"{self._key_prefix}:{{{key}}}"

    async def snapshot(self, keys: Sequence[str]) -> dict[str, DeploymentHealth]:
        """Health of each deployment, in one round trip for the stale ones; never raises on Redis errors."""
        now = self._clock()
        result: dict[str, DeploymentHealth] = {}
        stale: list[str] = []
        for key in dict.fromkeys(keys):
            cached = self._cache.get(key)
            # a clock stepped backwards must not keep an entry fresh
            if cached is not None and cached.fetched_at <= now < cached.fetched_at + self._cache_ttl_s:
                result[key] = cached.health
            else:
                stale.append(key)
        if not stale:
            return result
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in stale:
                    pipe.hgetall(self.redis_key(key))
                rows = await pipe.execute()
            fresh = {key: self._parse(key, row, now) for key, row in zip(stale, rows, strict=True)}
        except _REDIS_ERRORS as exc:
            log.warning("deployment health not read from Redis, serving last known values: %r", exc)
            fresh = {key: self._last_known(key) for key in stale}
        for key, health in fresh.items():
            # also after a failure, so a Redis outage costs one attempt per cache_ttl_s, not one per request
            self._cache[key] = _Cached(now, health)
            result[key] = health
        return result

    async def acquire_probe(self, key: str) -> bool:
        """Take a probe slot (or pass freely if closed); on Redis errors only a known-closed breaker passes."""
        policy = self._policy
        try:
            granted = await self._acquire_script(
                keys=[self.redis_key(key)],
                args=[self._clock(), policy.half_open_probes, policy.open_s, STATE_TTL_S],
            )
        except _REDIS_ERRORS as exc:
            log.warning("probe slot for %s not taken, Redis failed: %r", key, exc)
            return self._last_known(key).state is BreakerState.CLOSED
        finally:
            self._invalidate(key)
        return bool(granted)

    async def release_probe(self, key: str) -> None:
        """Give back a probe slot without an outcome (the attempt was not made); on Redis errors log it."""
        try:
            await self._release_script(keys=[self.redis_key(key)])
        except _REDIS_ERRORS as exc:
            # the slot frees itself after open_s anyway
            log.warning("probe slot for %s not released, Redis failed: %r", key, exc)
        finally:
            self._invalidate(key)

    async def record(
        self,
        key: str,
        outcome: AttemptOutcome,
        *,
        elapsed_s: float = 0.0,
        megapixels: float = 0.0,
        retry_after_s: float | None = None,
        probe: bool = False,
    ) -> None:
        """Apply one attempt's outcome atomically; on Redis errors log it and drop it."""
        policy = self._policy
        cooldown_s = max(0.0, min(float(retry_after_s or 1.0), policy.max_retry_after_s))
        # float(): redis-py cannot encode a Fraction, and pricing computes megapixels as Fractions
        args = [
            self._clock(), outcome.value, float(elapsed_s), float(megapixels), cooldown_s, int(probe),
            policy.consecutive_failures, policy.window_s, policy.min_requests, policy.failure_rate,
            policy.open_s, policy.successes_to_close, policy.auth_open_s, policy.latency_alpha, STATE_TTL_S,
        ]  # fmt: skip
        now = args[0]
        try:
            before, after, row = await self._record_script(keys=[self.redis_key(key)], args=args)
        except _REDIS_ERRORS as exc:
            log.warning("health record for %s dropped, Redis failed: %s %r", key, outcome.value, exc)
            self._invalidate(key)
            return
        # The script hands back the new state: refresh this instance's cache with it instead of dropping it,
        # so our own outcome is seen at once and the next snapshot costs no round trip.
        fields = dict(zip(row[::2], row[1::2], strict=True))
        self._cache[key] = _Cached(now, self._parse(key, fields, now))
        before, after = _text(before), _text(after)
        if before != after:
            level = logging.INFO if after == BreakerState.CLOSED else logging.WARNING
            log.log(level, "deployment %s breaker %s -> %s after %s", key, before, after, outcome.value)

    async def force_open(self, key: str, seconds: float) -> None:
        """Open the breaker until `seconds` from now, exactly (so it can shorten one too); raises on Redis errors."""
        redis_key = self.redis_key(key)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                retry_at = repr(self._clock() + seconds)
                pipe.hset(redis_key, mapping={"state": "open", "retry_at": retry_at, "half_open_successes": 0})
                pipe.expire(redis_key, STATE_TTL_S)
                await pipe.execute()
        finally:
            self._invalidate(key)
        log.warning("deployment %s breaker forced open for %.0f s", key, seconds)

    async def reset(self, key: str) -> None:
        """Forget everything about a deployment (closed, no cool-down, no history); raises on Redis errors."""
        try:
            await self._redis.delete(self.redis_key(key))
        finally:
            self._invalidate(key)

    def _invalidate(self, key: str) -> None:
        if (cached := self._cache.get(key)) is not None:
            self._cache[key] = _Cached(-math.inf, cached.health)

    def _last_known(self, key: str) -> DeploymentHealth:
        cached = self._cache.get(key)
        return cached.health if cached is not None else DeploymentHealth(key)

    def _parse(self, key: str, row: Mapping[bytes | str, bytes | str], now: float) -> DeploymentHealth:
        """A deployment's hash as a value, with an expired window and leaked probe slots already discounted."""
        if not row:
            return DeploymentHealth(key)
        fields = {_text(name): _text(value) for name, value in row.items()}

        def num(name: str) -> float:
            return float(fields.get(name) or 0)

        policy = self._policy
        window_current = now < num("window_start") + policy.window_s
        probes = int(num("probes_in_flight"))
        if probes and now >= num("probe_started_at") + policy.open_s:
            probes = 0
        samples = int(num("latency_samples"))
        mean = num("latency_mean") if samples else None
        p95 = mean + P95_Z * math.sqrt(max(num("latency_var"), 0.0)) if mean is not None else None
        return DeploymentHealth(
            key=key,
            state=BreakerState(fields.get("state", BreakerState.CLOSED.value)),
            retry_at=num("retry_at"),
            consecutive_failures=int(num("consecutive_failures")),
            probes_in_flight=probes,
            half_open_successes=int(num("half_open_successes")),
            window_successes=int(num("window_successes")) if window_current else 0,
            window_failures=int(num("window_failures")) if window_current else 0,
            latency_s_per_mp=mean,
            latency_p95_s_per_mp=p95,
            latency_samples=samples,
        )
