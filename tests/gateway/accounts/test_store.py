"""AccountStore against a real redis-server: teams, keys, revocation, and what is (not) stored."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gateway.accounts.keys import parse_key
from gateway.accounts.principal import Limits, Period, Principal
from gateway.accounts.store import AccountStore
from gateway.exceptions import Conflict, NotFound
from tests.gateway.accounts.conftest import Client
from tests.redis_harness import Clock

TEAM_LIMITS = Limits(rpm=600, concurrency=20, budget_micros=250_000_000, budget_period=Period.MONTH)
KEY_LIMITS = Limits(rpm=60, budget_micros=5_000_000, budget_period=Period.DAY)


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
def store(client: Client, clock: Clock) -> AccountStore:
    return AccountStore(client.redis, clock=clock)


async def test_create_get_and_list_teams(store: AccountStore) -> None:
    team = await store.create_team("acme", "Acme Research", TEAM_LIMITS)
    await store.create_team("beta")
    assert team.id == "acme"
    assert team.name == "Acme Research"
    assert team.created_at == 1_700_000_000
    assert team.limits == TEAM_LIMITS
    assert await store.get_team("acme") == team
    assert await store.get_team("nope") is None
    teams = await store.list_teams()
    assert [t.id for t in teams] == ["acme", "beta"]
    assert teams[1].name == "beta"  # the name defaults to the id
    assert teams[1].limits == Limits()  # absent fields: unlimited


async def test_creating_a_team_twice_conflicts_and_keeps_the_first(store: AccountStore) -> None:
    await store.create_team("acme", "First")
    with pytest.raises(Conflict):
        await store.create_team("acme", "Second")
    team = await store.get_team("acme")
    assert team is not None
    assert team.name == "First"


async def test_update_sets_and_clears_fields(store: AccountStore) -> None:
    await store.create_team("acme", limits=TEAM_LIMITS)
    team = await store.update_team("acme", name="Acme", rpm=None, budget_micros=1_000, budget_period=Period.TOTAL)
    assert team.name == "Acme"
    assert team.limits == Limits(rpm=None, concurrency=20, budget_micros=1_000, budget_period=Period.TOTAL)
    team = await store.update_team("acme", budget_period=None, budget_micros=None)
    assert team.limits == Limits(concurrency=20)
    with pytest.raises(NotFound):
        await store.update_team("nope", rpm=5)
    with pytest.raises(TypeError):
        await store.update_team("acme", colour="red")


async def test_create_list_and_revoke_keys(store: AccountStore, clock: Clock) -> None:
    await store.create_team("acme")
    await store.create_team("beta")
    first, raw = await store.create_key("acme", "ci", ["flux.2-klein-4b"], KEY_LIMITS)
    clock.now += 10
    second, _ = await store.create_key("acme", "notebook")
    other, _ = await store.create_key("beta")
    parsed = parse_key(raw)
    assert parsed is not None
    assert (parsed.team, parsed.key_id) == ("acme", first.id)
    assert first.models == frozenset({"flux.2-klein-4b"})
    assert first.limits == KEY_LIMITS
    assert second.models is None
    assert first.active
    assert await store.get_key("acme", first.id) == first
    assert await store.get_key("beta", first.id) is None
    assert [k.id for k in await store.list_keys("acme")] == [first.id, second.id]
    assert [k.id for k in await store.list_keys()] == [first.id, second.id, other.id]
    assert await store.list_keys("nope") == []

    clock.now += 5
    revoked = await store.revoke_key("acme", first.id)
    assert revoked.revoked_at == 1_700_000_015
    assert not revoked.active
    clock.now += 5
    again = await store.revoke_key("acme", first.id)  # idempotent: the first revocation time stays
    assert again == revoked
    with pytest.raises(NotFound):
        await store.revoke_key("acme", "0123456789ab")
    assert await store.get_key("acme", "0123456789ab") is None  # revoking an unknown key created nothing


async def test_keys_need_an_existing_team(store: AccountStore) -> None:
    with pytest.raises(NotFound):
        await store.create_key("nope")


async def test_key_info_repr_has_no_secret_material(store: AccountStore) -> None:
    await store.create_team("acme")
    info, raw = await store.create_key("acme", "ci")
    parsed = parse_key(raw)
    assert parsed is not None
    assert parsed.secret not in repr(info)
    assert "hash" not in repr(info)


async def test_no_raw_key_or_secret_is_stored_anywhere(store: AccountStore, client: Client) -> None:
    await store.create_team("acme", limits=TEAM_LIMITS)
    raws = [(await store.create_key("acme", f"k{i}", ["flux.2-klein-4b"], KEY_LIMITS))[1] for i in range(3)]
    parsed = [parse_key(raw) for raw in raws]
    secrets = [p.secret for p in parsed if p is not None]
    assert len(secrets) == len(raws)
    await store.revoke_key("acme", raws[0].split("_")[2])
    stored = await _everything(client.redis)
    assert len(stored) > 10
    for needle in [*raws, *secrets]:
        assert not any(needle in text for text in stored)


async def _everything(redis: Redis) -> list[str]:
    """Every key name and every value (hash fields and values, set members, strings) in the database."""
    texts: list[str] = []
    async for name in redis.scan_iter():
        texts.append(name.decode())
        kind = (await redis.type(name)).decode()
        if kind == "hash":
            texts += [part.decode() for pair in (await redis.hgetall(name)).items() for part in pair]
        elif kind == "set":
            texts += [m.decode() for m in await redis.smembers(name)]
        elif kind == "string":
            texts.append((await redis.get(name)).decode())
        else:
            pytest.fail(f"unexpected {kind} at {name!r}")
    return texts


async def test_principal_for_a_valid_key_in_one_round_trip(store: AccountStore, client: Client) -> None:
    await store.create_team("acme", limits=TEAM_LIMITS)
    info, raw = await store.create_key("acme", "ci", ["flux.2-klein-4b"], KEY_LIMITS)
    before = client.round_trips.count
    principal = await store.principal_for(raw)
    assert client.round_trips.count - before == 1
    assert principal == Principal(
        team="acme",
        key_id=info.id,
        is_admin=False,
        models=frozenset({"flux.2-klein-4b"}),
        key_limits=KEY_LIMITS,
        team_limits=TEAM_LIMITS,
    )
    assert principal.may_use("flux.2-klein-4b")
    assert not principal.may_use("flux.2-pro")


async def test_principal_for_rejects_wrong_unknown_revoked_and_malformed_keys(
    store: AccountStore, client: Client
) -> None:
    await store.create_team("acme")
    info, raw = await store.create_key("acme")
    parsed = parse_key(raw)
    assert parsed is not None
    before = client.round_trips.count
    assert await store.principal_for("not-a-gateway-key") is None
    assert client.round_trips.count == before  # malformed keys never reach Redis
    assert await store.principal_for(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None  # wrong secret
    assert await store.principal_for(f"fgk_acme_0123456789ab_{parsed.secret}") is None  # unknown key id
    assert await store.principal_for(f"fgk_other_{info.id}_{parsed.secret}") is None  # another team
    assert await store.principal_for(raw) is not None
    await store.revoke_key("acme", info.id)
    assert await store.principal_for(raw) is None


async def test_decoded_responses_work_too(client: Client) -> None:
    """The store also works on a client built with decode_responses=True."""
    pool = client.redis.connection_pool
    decoded = Redis(host=pool.connection_kwargs["host"], port=pool.connection_kwargs["port"], decode_responses=True)
    try:
        store = AccountStore(decoded)
        await store.create_team("acme", limits=TEAM_LIMITS)
        _, raw = await store.create_key("acme", models=["flux.2-klein-4b"])
        principal = await store.principal_for(raw)
        assert principal is not None
        assert principal.team_limits == TEAM_LIMITS
        assert [t.id for t in await store.list_teams()] == ["acme"]
        assert (await store.revoke_key("acme", principal.key_id)).revoked_at is not None
    finally:
        await decoded.aclose()
