"""The `Idempotency-Key` header, like Stripe: a retried request gets the first one's response, not a second run.

Layout: one hash per (team, key), `idem:{<team>}:<sha256 hex of the key>` (a hash tag per team, ready for
Redis Cluster; the raw client-chosen key is never stored), with fields
  state        in_progress | done
  fp           the request fingerprint: a retry must repeat the request exactly, or it gets MISMATCH
  lock_until   (in_progress) when the claim lapses, Unix seconds: a gateway that died mid-request frees it
  status, headers (JSON object), body   (done) the stored response
It expires `ttl_s` after the claim and again after completion. Each call is one Lua script (atomic, one round
trip); times come from the caller's clock, as in the health store. The client must not decode responses
(the body is raw bytes).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

log = logging.getLogger("gateway.metering.idempotency")

MAX_KEY_LENGTH = 255  # as Stripe: longer keys are refused (400), not truncated or stored

# KEYS[1] = hash; ARGV = fingerprint, now, lock_ttl_s, ttl_ms.
# Returns {'new'} | {'mismatch'} | {'in_progress'} | {'done', status, headers, body}.
BEGIN_LUA = """
local f = redis.call('HMGET', KEYS[1], 'state', 'fp', 'lock_until')
local now = tonumber(ARGV[2])
local function claim()
  redis.call('HSET', KEYS[1], 'state', 'in_progress', 'fp', ARGV[1],
    'lock_until', string.format('%.17g', now + tonumber(ARGV[3])))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'new'}
end
if not f[1] then return claim() end
if f[2] ~= ARGV[1] then return {'mismatch'} end
if f[1] == 'done' then
  local r = redis.call('HMGET', KEYS[1], 'status', 'headers', 'body')
  return {'done', r[1], r[2], r[3]}
end
if now < (tonumber(f[3]) or 0) then return {'in_progress'} end
-- the claim lapsed: its gateway died (or outran lock_ttl_s), so a retry may run the request again
return claim()
"""

# KEYS[1] = hash; ARGV = fingerprint, status, headers, body, ttl_ms. Returns 1 if stored, 0 if not ours.
COMPLETE_LUA = """
local f = redis.call('HMGET', KEYS[1], 'state', 'fp')
if f[1] ~= 'in_progress' or f[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4])
redis.call('HDEL', KEYS[1], 'lock_until')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS[1] = hash; ARGV = fingerprint. Returns 1 if the claim was deleted.
ABANDON_LUA = """
local f = redis.call('HMGET', KEYS[1], 'state', 'fp')
if f[1] ~= 'in_progress' or f[2] ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class IdemState(enum.StrEnum):
    """What `begin` found for an idempotency key."""

    NEW = "new"  # the caller owns the key now: run the request, then complete() or abandon()
    DONE = "done"  # answer with the stored response
    IN_PROGRESS = "in_progress"  # another request with this key is running: wait() or answer 409
    MISMATCH = "mismatch"  # the key was used for a different request: answer 409 (or 422, as Stripe)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as it is replayed to a retry."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class IdemBegin:
    """The outcome of `begin` (or `wait`)."""

    state: IdemState
    response: StoredResponse | None = None  # set when DONE


def fingerprint(method: str, path: str, body: bytes) -> str:
    """sha256 hex of what a retry must repeat exactly: method, path (with any query) and body."""
    digest = hashlib.sha256()
    # NUL cannot occur in an HTTP method or path, so the parts cannot run into each other
    digest.update(f"{method.upper()}\0{path}\0".encode())
    digest.update(body)
    return digest.hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class IdempotencyStore:
    """Idempotency keys in Redis, scoped per team."""

    def __init__(
        self,
        redis: Redis,
        *,
        ttl_s: float = 86_400,
        lock_ttl_s: float = 600,
        clock: Callable[[], float] = time.time,
        key_prefix: str = "idem",
    ) -> None:
        self._redis = redis
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._lock_ttl_s = lock_ttl_s
        self._clock = clock
        self._key_prefix = key_prefix
        self._begin_script = redis.register_script(BEGIN_LUA)
        self._complete_script = redis.register_script(COMPLETE_LUA)
        self._abandon_script = redis.register_script(ABANDON_LUA)

    def redis_key(self, team: str, key: str) -> str:
        """The Redis hash of one key; raises ValueError for an empty or overlong key (the caller's 400)."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ValueError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters, got {len(key)}")
        return f"{self._key_prefix}:{{{team}}}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def begin(self, team: str, key: str, fingerprint: str) -> IdemBegin:
        """Claim the key, or report why not (one round trip); raises on Redis errors."""
        reply = await self._begin_script(
            keys=[self.redis_key(team, key)],
            args=[fingerprint, repr(float(self._clock())), float(self._lock_ttl_s), self._ttl_ms],
        )
        state = IdemState(_text(reply[0]))
        if state is not IdemState.DONE:
            return IdemBegin(state)
        status, headers, body = reply[1:]
        response = StoredResponse(int(status), orjson.loads(headers), bytes(body))
        return IdemBegin(state, response)

    async def complete(self, team: str, key: str, fingerprint: str, response: StoredResponse) -> None:
        """Store the response for `ttl_s` if the claim is still ours (one round trip); raises on Redis errors."""
        stored = await self._complete_script(
            keys=[self.redis_key(team, key)],
            args=[fingerprint, response.status, orjson.dumps(response.headers), response.body, self._ttl_ms],
        )
        if not stored:
            # the claim lapsed (lock_ttl_s) and a retry took it, or it was abandoned: theirs stands
            log.warning("idempotent response for team %s not stored: the claim is no longer ours", team)

    async def abandon(self, team: str, key: str, fingerprint: str) -> None:
        """Drop our claim (the request failed retryably), so a retry runs it again."""
        await self._abandon_script(keys=[self.redis_key(team, key)], args=[fingerprint])

    async def wait(self, team: str, key: str, fingerprint: str, timeout_s: float, poll_s: float = 0.05) -> IdemBegin:
        """Poll `begin` until it is not IN_PROGRESS or `timeout_s` passes; NEW means the caller owns the key now."""
        loop = asyncio.get_running_loop()
        # the loop's monotonic clock: an injected wall clock may be a test's hand-moved one
        deadline = loop.time() + timeout_s
        while True:
            result = await self.begin(team, key, fingerprint)
            if result.state is not IdemState.IN_PROGRESS or loop.time() >= deadline:
                return result
            await asyncio.sleep(min(poll_s, max(0.0, deadline - loop.time())))
