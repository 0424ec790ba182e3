"""Fixtures for the Redis-backed unit suites: one real redis-server per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.redis_server import EmbeddedRedis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server
