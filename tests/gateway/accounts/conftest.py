"""Accounts fixtures: a real redis-server per module, and clients that count their round trips."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Connection, ConnectionPool, Redis

from gateway.redis_server import EmbeddedRedis


@dataclass
class RoundTrips:
    """Packed sends to Redis: one per command, one per whole pipeline, i.e. one per network round trip."""

    count: int = 0


class CountingConnection(Connection):
    """A connection that counts every request it writes to the socket."""

    def __init__(self, *, round_trips: RoundTrips, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._round_trips = round_trips

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._round_trips.count += 1
        await super().send_packed_command(command, check_health)


@dataclass
class Client:
    """One "gateway instance"'s Redis client, with its round-trip counter."""

    redis: Redis
    round_trips: RoundTrips


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., Client]]:
    """Builds clients (bytes responses, as the app's client) on a server; all closed at the end."""
    clients: list[Client] = []

    def make(server: EmbeddedRedis, **options: Any) -> Client:
        round_trips = RoundTrips()
        pool = ConnectionPool.from_url(
            server.url, connection_class=CountingConnection, round_trips=round_trips, **options
        )
        client = Client(Redis(connection_pool=pool), round_trips)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.redis.aclose(close_connection_pool=True)


@pytest.fixture
async def client(redis_server: EmbeddedRedis, make_client: Callable[..., Client]) -> Client:
    """A client on a freshly flushed server."""
    client = make_client(redis_server)
    await client.redis.flushall()
    return client
