"""Who is calling: the admin key or a team key in `Authorization: Bearer <key>`, resolved to a Principal.

Team keys are looked up in Redis and cached per process for `cache_ttl_s`, so a revocation takes effect on
every instance within that time. While Redis is unreachable, a cached answer up to `stale_ttl_s` old is used
instead: keys seen recently keep working through an outage; keys never seen get a 503, not a wrong 401.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway.accounts.keys import cache_fingerprint, parse_key
from gateway.accounts.principal import ADMIN_TEAM, Principal
from gateway.accounts.store import AccountStore
from gateway.exceptions import AuthenticationFailed, AuthUnavailable, PermissionDenied

log = logging.getLogger("gateway.auth")

ADMIN_PRINCIPAL = Principal(team=ADMIN_TEAM, key_id="admin", is_admin=True)
# OSError covers refused or reset connections outside redis-py's own errors; TimeoutError, asyncio timeouts.
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
MISSING_KEY = "Missing API key. Send it as 'Authorization: Bearer <key>' (the openai SDKs do this from api_key)."
MALFORMED = "Malformed Authorization header; expected 'Bearer <key>'."
INCORRECT_KEY = "Incorrect API key provided."
REDIS_RETRY_S = 1.0  # after a failed lookup, keys with a cached answer skip Redis this long


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal | None  # None: Redis said the key is unknown, revoked or wrong
    fetched_at: float


class Authenticator:
    """Resolves bearer keys to principals; never logs or echoes a presented key."""

    def __init__(
        self,
        store: AccountStore,
        admin_key: str,
        *,
        cache_ttl_s: float = 2.0,
        stale_ttl_s: float = 300.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not admin_key:
            raise ValueError("an admin key is required")
        self._store = store
        self._admin_key = admin_key.encode()
        self._cache_ttl_s = cache_ttl_s
        self._stale_ttl_s = stale_ttl_s
        self._clock = clock
        # Rejections are cached apart, and fewer: a flood of made-up keys must not evict the good keys
        # that carry traffic through a Redis outage.
        self._accepted: OrderedDict[bytes, _Entry] = OrderedDict()
        self._rejected: OrderedDict[bytes, _Entry] = OrderedDict()
        self._max_accepted = max_entries
        self._max_rejected = max(1, max_entries // 10)
        self._redis_down = False
        self._retry_redis_at = 0.0

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller `authorization` identifies; AuthenticationFailed (401) or AuthUnavailable (503)."""
        if not authorization:
            raise AuthenticationFailed(MISSING_KEY)
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationFailed(MALFORMED)
        if hmac.compare_digest(key.encode(), self._admin_key):
            return ADMIN_PRINCIPAL
        if parse_key(key) is None:
            raise AuthenticationFailed(INCORRECT_KEY)  # not a team key's shape: no need to ask Redis
        principal = await self._lookup(key)
        if principal is None:
            raise AuthenticationFailed(INCORRECT_KEY)
        return principal

    async def _lookup(self, key: str) -> Principal | None:
        fingerprint = cache_fingerprint(key)
        now = self._clock()
        cached = self._accepted.get(fingerprint) or self._rejected.get(fingerprint)
        if cached is not None and now - cached.fetched_at < self._cache_ttl_s:
            return cached.principal
        if cached is not None and now < self._retry_redis_at and now - cached.fetched_at < self._stale_ttl_s:
            return cached.principal  # Redis failed a moment ago: don't make every request wait out a timeout
        try:
            principal = await self._store.principal_for(key)
        except _REDIS_ERRORS as exc:
            if not self._redis_down:
                log.warning("Redis is unreachable for key lookups (%s); serving cached keys", type(exc).__name__)
                self._redis_down = True
            self._retry_redis_at = self._clock() + REDIS_RETRY_S
            if cached is not None and now - cached.fetched_at < self._stale_ttl_s:
                return cached.principal
            raise AuthUnavailable("The gateway cannot verify this API key right now; retry shortly.") from None
        if self._redis_down:
            log.info("Redis answers key lookups again")
            self._redis_down = False
        self._remember(fingerprint, _Entry(principal, now))
        return principal

    def _remember(self, fingerprint: bytes, entry: _Entry) -> None:
        self._accepted.pop(fingerprint, None)
        self._rejected.pop(fingerprint, None)
        cache, limit = (self._accepted, self._max_accepted) if entry.principal else (self._rejected, self._max_rejected)
        cache[fingerprint] = entry
        while len(cache) > limit:
            cache.popitem(last=False)  # the least recently fetched

    @staticmethod
    def require_admin(principal: Principal) -> Principal:
        """`principal` if it is the admin; PermissionDenied (403) otherwise."""
        return require_admin(principal)


def require_admin(principal: Principal) -> Principal:
    """`principal` if it is the admin; PermissionDenied (403) otherwise."""
    if not principal.is_admin:
        raise PermissionDenied("This route needs the gateway's admin key; team keys cannot use it.")
    return principal
