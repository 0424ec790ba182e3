"""Teams and API keys in Redis; only the sha256 of a key's secret is stored.

Layout (`{T}` is a literal hash tag, so one team's keys share a Redis Cluster slot):

    teams               set   every team id
    team:{T}            hash  name, created_at, rpm, concurrency, budget_micros, budget_period
    keys:{T}            set   the team's key ids
    key:{T}:{kid}       hash  name, hash, created_at, revoked_at, models, rpm, concurrency, budget_micros,
                              budget_period

An absent limit field means unlimited; `models` is comma-separated canonical model ids, empty for all.
Times are Unix seconds. Nothing is ever deleted: a revoked key keeps its record for audits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from redis.asyncio import Redis

from gateway.accounts.keys import format_key, hash_secret, new_key_id, new_secret, parse_key, secret_matches
from gateway.accounts.principal import Limits, Period, Principal
from gateway.accounts.records import (
    KeyInfo,
    Team,
    decode,
    key_info_from,
    limit_fields,
    limits_from,
    team_from,
    text_fields,
)
from gateway.exceptions import Conflict, NotFound

TEAMS = "teams"
UNLIMITED = Limits()
_LIMIT_FIELDS = ("rpm", "concurrency", "budget_micros", "budget_period")
_TEAM_FIELDS = frozenset({"name", *_LIMIT_FIELDS})

# KEYS[1] = hash; ARGV = field, value, ... Creates the hash unless it exists (1 if created): atomic, one key.
CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS[1] = key hash; ARGV[1] = now. Marks an existing key revoked, keeping the first time; returns the hash.
REVOKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""


def team_key(team: str) -> str:
    return f"team:{{{team}}}"


def team_keys_key(team: str) -> str:
    return f"keys:{{{team}}}"


def key_key(team: str, key_id: str) -> str:
    return f"key:{{{team}}}:{key_id}"


class AccountStore:
    """Creates, reads and revokes teams and keys; resolves a raw key to a Principal in one round trip."""

    def __init__(self, redis: Redis, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock
        self._create = redis.register_script(CREATE_LUA)
        self._revoke = redis.register_script(REVOKE_LUA)

    async def create_team(self, team_id: str, name: str | None = None, limits: Limits = UNLIMITED) -> Team:
        """A new team; Conflict if the id is taken."""
        fields = {"name": name or team_id, "created_at": str(int(self._clock())), **limit_fields(limits)}
        created = await self._create(keys=[team_key(team_id)], args=_flatten(fields))
        # After the hash, so a team is listed only once it is whole; also on conflict, which heals a create
        # that died between the two writes (the hash and the set may live on different Cluster slots).
        await self._redis.sadd(TEAMS, team_id)
        if not created:
            raise Conflict(f"Team '{team_id}' already exists.", param="id")
        return team_from(team_id, fields)

    async def update_team(self, team_id: str, **changes: str | int | Period | None) -> Team:
        """Set fields of a team (name, rpm, concurrency, budget_micros, budget_period); None clears one."""
        if unknown := set(changes) - _TEAM_FIELDS:
            raise TypeError(f"unknown team fields: {sorted(unknown)}")
        if changes.get("name", "") is None:
            raise ValueError("a team's name cannot be cleared")
        await self.get_team(team_id, required=True)
        sets = {k: str(v) for k, v in changes.items() if v is not None}
        clears = [k for k, v in changes.items() if v is None]
        async with self._redis.pipeline(transaction=True) as pipe:
            if sets:
                pipe.hset(team_key(team_id), mapping=sets)
            if clears:
                pipe.hdel(team_key(team_id), *clears)
            await pipe.execute()
        return await self.get_team(team_id, required=True)

    async def get_team(self, team_id: str, *, required: bool = False) -> Team | None:
        """The team, or None (NotFound if `required`)."""
        fields = text_fields(await self._redis.hgetall(team_key(team_id)))
        if not fields:
            if required:
                raise NotFound(f"No team '{team_id}'.", param="team")
            return None
        return team_from(team_id, fields)

    async def list_teams(self) -> list[Team]:
        """Every team, by id."""
        ids = sorted(decode(m) for m in await self._redis.smembers(TEAMS))
        async with self._redis.pipeline(transaction=False) as pipe:
            for team_id in ids:
                pipe.hgetall(team_key(team_id))
            rows = await pipe.execute()
        return [team_from(t, text_fields(row)) for t, row in zip(ids, rows, strict=True) if row]

    async def create_key(
        self, team_id: str, name: str = "", models: Iterable[str] | None = None, limits: Limits = UNLIMITED
    ) -> tuple[KeyInfo, str]:
        """A new key for an existing team, and its raw form: returned here once, never stored."""
        await self.get_team(team_id, required=True)
        key_id, secret = new_key_id(), new_secret()
        model_ids = ",".join(sorted(set(models or ())))
        fields = {
            "name": name,
            "hash": hash_secret(secret),
            "created_at": str(int(self._clock())),
            "models": model_ids,
            **limit_fields(limits),
        }
        if not await self._create(keys=[key_key(team_id, key_id)], args=_flatten(fields)):
            raise Conflict("Key id collision; retry.")  # 48 random bits: practically never
        await self._redis.sadd(team_keys_key(team_id), key_id)
        return key_info_from(team_id, key_id, fields), format_key(team_id, key_id, secret)

    async def get_key(self, team_id: str, key_id: str) -> KeyInfo | None:
        fields = text_fields(await self._redis.hgetall(key_key(team_id, key_id)))
        return key_info_from(team_id, key_id, fields) if fields else None

    async def list_keys(self, team_id: str | None = None) -> list[KeyInfo]:
        """Every key of one team, or of every team; by team, then creation time."""
        teams = [team_id] if team_id is not None else sorted(decode(m) for m in await self._redis.smembers(TEAMS))
        async with self._redis.pipeline(transaction=False) as pipe:
            for team in teams:
                pipe.smembers(team_keys_key(team))
            id_sets = await pipe.execute()
        refs = [(team, decode(kid)) for team, ids in zip(teams, id_sets, strict=True) for kid in ids]
        async with self._redis.pipeline(transaction=False) as pipe:
            for team, kid in refs:
                pipe.hgetall(key_key(team, kid))
            rows = await pipe.execute()
        keys = [key_info_from(team, kid, text_fields(row)) for (team, kid), row in zip(refs, rows, strict=True) if row]
        return sorted(keys, key=lambda k: (k.team, k.created_at, k.id))

    async def revoke_key(self, team_id: str, key_id: str) -> KeyInfo:
        """Revoke a key (idempotent: the first revocation time stays); NotFound if there is no such key."""
        raw = await self._revoke(keys=[key_key(team_id, key_id)], args=[str(int(self._clock()))])
        if not raw:
            raise NotFound(f"No key '{key_id}' in team '{team_id}'.", param="key_id")
        fields = text_fields(dict(zip(raw[::2], raw[1::2], strict=True)))
        return key_info_from(team_id, key_id, fields)

    async def principal_for(self, raw_key: str) -> Principal | None:
        """The caller a raw key identifies, or None if it is unknown, revoked or has a wrong secret."""
        parsed = parse_key(raw_key)
        if parsed is None:
            return None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key_key(parsed.team, parsed.key_id))
            pipe.hgetall(team_key(parsed.team))
            key_row, team_row = await pipe.execute()
        key_fields, team_fields = text_fields(key_row), text_fields(team_row)
        if not key_fields or not team_fields or key_fields.get("revoked_at"):
            return None
        if not secret_matches(parsed.secret, key_fields.get("hash", "")):
            return None
        info = key_info_from(parsed.team, parsed.key_id, key_fields)
        return Principal(
            team=parsed.team,
            key_id=parsed.key_id,
            models=info.models,
            key_limits=info.limits,
            team_limits=limits_from(team_fields),
        )


def _flatten(fields: Mapping[str, str]) -> list[str]:
    return [part for item in fields.items() for part in item]
