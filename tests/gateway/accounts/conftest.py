"""Accounts fixtures: a real redis-server per module, and clients that count their round trips."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.redis_server import EmbeddedRedis
from tests.redis_harness import RoundTrips, counting_redis


@dataclass
class Client:
    """One "gateway instance"'s Redis client, with its round-trip counter."""

    redis: Redis
    round_trips: RoundTrips


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., Client]]:
    """Builds clients (bytes responses, as the app's client) on a server; all closed at the end."""
    clients: list[Client] = []

    def make(server: EmbeddedRedis, **options: Any) -> Client:
        client = Client(*counting_redis(server.url, **options))
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
