"""Authenticator: the admin key, team keys through the cache, revocation across instances, Redis outages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.accounts.authenticator import REDIS_RETRY_S, Authenticator, require_admin
from gateway.accounts.principal import ADMIN_TEAM, Limits, Principal
from gateway.accounts.store import AccountStore
from gateway.exceptions import AuthenticationFailed, AuthUnavailable, PermissionDenied
from gateway.redis_server import EmbeddedRedis
from tests.gateway.accounts.conftest import Client
from tests.redis_harness import Clock

ADMIN_KEY = "sk-test-admin-key"


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def make_auth(clock: Clock) -> Callable[..., Authenticator]:
    def make(client: Client, **options: float) -> Authenticator:
        return Authenticator(AccountStore(client.redis), ADMIN_KEY, clock=clock, **options)

    return make


async def _team_key(client: Client, team: str = "acme") -> tuple[str, str]:
    store = AccountStore(client.redis)
    await store.create_team(team, limits=Limits(rpm=10))
    info, raw = await store.create_key(team, "test")
    return info.id, raw


async def test_admin_key_is_the_admin_principal(client: Client, make_auth: Callable[..., Authenticator]) -> None:
    auth = make_auth(client)
    before = client.round_trips.count
    principal = await auth.authenticate(f"Bearer {ADMIN_KEY}")
    assert principal.is_admin
    assert (principal.team, principal.key_id) == (ADMIN_TEAM, "admin")
    assert principal.models is None
    assert require_admin(principal) is principal
    assert client.round_trips.count == before  # the admin key never needs Redis


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Missing API key"),
        ("", "Missing API key"),
        ("Basic abc", "Malformed Authorization header"),
        ("Bearer ", "Malformed Authorization header"),
        ("Bearer sk-wrong", "Incorrect API key provided."),
        ("Bearer fgk_acme_0123456789ab_not-a-real-secret", "Incorrect API key provided."),
    ],
)
async def test_bad_headers_are_401_without_echoing_the_key(
    client: Client, make_auth: Callable[..., Authenticator], header: str | None, message: str
) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await make_auth(client).authenticate(header)
    assert caught.value.status_code == 401
    assert caught.value.message.startswith(message)
    assert "sk-wrong" not in caught.value.message
    assert "not-a-real-secret" not in caught.value.message


async def test_team_key_resolves_and_is_cached(client: Client, make_auth: Callable[..., Authenticator]) -> None:
    key_id, raw = await _team_key(client)
    auth = make_auth(client)
    before = client.round_trips.count
    principal = await auth.authenticate(f"bearer {raw}")  # the scheme is case-insensitive
    assert (principal.team, principal.key_id, principal.is_admin) == ("acme", key_id, False)
    assert principal.team_limits == Limits(rpm=10)
    for _ in range(5):
        assert await auth.authenticate(f"Bearer {raw}") == principal
    assert client.round_trips.count - before == 1
    with pytest.raises(PermissionDenied) as caught:
        require_admin(principal)
    assert caught.value.status_code == 403
    assert caught.value.error_type == "permission_error"


async def test_revocation_reaches_another_instance_within_the_cache_ttl(
    redis_server: EmbeddedRedis,
    client: Client,
    make_client: Callable[..., Client],
    make_auth: Callable[..., Authenticator],
    clock: Clock,
) -> None:
    key_id, raw = await _team_key(client)
    here = make_auth(client, cache_ttl_s=2.0)
    there = make_auth(make_client(redis_server), cache_ttl_s=2.0)  # its own Redis client: another instance
    await here.authenticate(f"Bearer {raw}")
    await there.authenticate(f"Bearer {raw}")

    await AccountStore(client.redis).revoke_key("acme", key_id)
    clock.now += 1.9
    assert (await there.authenticate(f"Bearer {raw}")).key_id == key_id  # still cached: at most 2 s stale
    clock.now += 0.2
    for auth in (here, there):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer {raw}")


async def test_unknown_keys_are_cached_too(client: Client, make_auth: Callable[..., Authenticator]) -> None:
    auth = make_auth(client)
    unknown = "Bearer fgk_acme_0123456789ab_secret"
    before = client.round_trips.count
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(unknown)
    assert client.round_trips.count - before == 1


async def test_cache_is_bounded_and_drops_the_oldest(client: Client, make_auth: Callable[..., Authenticator]) -> None:
    store = AccountStore(client.redis)
    await store.create_team("acme")
    raws = [(await store.create_key("acme"))[1] for _ in range(4)]
    auth = make_auth(client, max_entries=3)
    for raw in raws:
        await auth.authenticate(f"Bearer {raw}")
    before = client.round_trips.count
    for raw in raws[1:]:
        await auth.authenticate(f"Bearer {raw}")
    assert client.round_trips.count == before  # the newest three are cached
    await auth.authenticate(f"Bearer {raws[0]}")
    assert client.round_trips.count == before + 1  # the oldest was dropped


class CountingStore(AccountStore):
    """An AccountStore that counts key lookups, failed ones included."""

    lookups = 0

    async def principal_for(self, raw_key: str) -> Principal | None:
        self.lookups += 1
        return await super().principal_for(raw_key)


async def test_redis_outage_serves_cached_keys_and_503s_the_rest(
    tmp_path: Path, make_client: Callable[..., Client], clock: Clock
) -> None:
    server = EmbeddedRedis(tmp_path / "doomed", appendonly=False).start()
    try:
        client = make_client(server, socket_connect_timeout=0.5, socket_timeout=0.5)
        key_id, raw = await _team_key(client)
        store = CountingStore(client.redis)
        auth = Authenticator(store, ADMIN_KEY, cache_ttl_s=2.0, stale_ttl_s=300.0, clock=clock)
        await auth.authenticate(f"Bearer {raw}")
        unknown = "Bearer fgk_acme_0123456789ab_never-seen"
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(unknown)
    finally:
        server.kill()

    clock.now += 10  # past the fresh TTL: the authenticator asks Redis, which is gone
    lookups = store.lookups
    assert (await auth.authenticate(f"Bearer {raw}")).key_id == key_id
    assert store.lookups == lookups + 1
    assert (await auth.authenticate(f"Bearer {raw}")).key_id == key_id
    assert store.lookups == lookups + 1  # just failed: cached keys skip Redis for a moment, no timeout each
    clock.now += REDIS_RETRY_S
    assert (await auth.authenticate(f"Bearer {raw}")).key_id == key_id
    assert store.lookups == lookups + 2  # then Redis is tried again
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(unknown)  # a cached rejection stays a rejection
    with pytest.raises(AuthUnavailable) as caught:
        await auth.authenticate("Bearer fgk_acme_ba9876543210_not-cached")
    assert caught.value.status_code == 503
    assert await auth.authenticate(f"Bearer {ADMIN_KEY}")  # the admin key needs no Redis

    clock.now += 300  # past the stale TTL: a cached answer is too old to trust
    with pytest.raises(AuthUnavailable):
        await auth.authenticate(f"Bearer {raw}")
