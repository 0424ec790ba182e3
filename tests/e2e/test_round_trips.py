"""Redis round trips per request on the hot path, counted (not guessed) on the real app.

The app runs in this process (uvicorn in a thread) so every write redis-py makes to a socket can be
counted: one `send_packed_command` is one round trip, and a pipeline sends once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from redis.asyncio.connection import AbstractConnection

from gateway.app import create_app
from gateway.redis_server import EmbeddedRedis, free_port
from gateway.settings import Settings
from tests.e2e.conftest import FAL_KEY, REPLICATE_KEY, Simulators

BODY = {"model": "replicate/flux.2-klein-4b", "prompt": "a lighthouse", "size": "1024x1024"}
ADMIN = "sk-round-trips"


class RoundTrips:
    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def counted_gateway(
    simulator_processes: Simulators, redis_server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, RoundTrips]]:
    trips = RoundTrips()
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        trips.count += 1
        await original(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    settings = Settings(
        admin_key=SecretStr(ADMIN),
        redis_url=redis_server.url,
        fal_base_url=simulator_processes.fal.url,
        replicate_base_url=simulator_processes.replicate.url,
        fal_key=SecretStr(FAL_KEY),
        replicate_api_token=SecretStr(REPLICATE_KEY),
        data_dir=tmp_path,
        port=free_port(),
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=settings.port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    yield url, trips
    server.should_exit = True
    thread.join(10)


def test_hot_path_round_trips(counted_gateway: tuple[str, RoundTrips], sims: Simulators) -> None:
    url, trips = counted_gateway
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert (
        httpx.post(
            f"{url}/v1/admin/teams",
            json={"id": "rt-team", "budget_usd": "100", "rpm": 100000, "concurrency": 100},
            headers=admin,
        ).status_code
        == 201
    )
    key = httpx.post(f"{url}/v1/admin/keys", json={"team": "rt-team", "rpm": 100000}, headers=admin).json()["key"]
    team_key = {"Authorization": f"Bearer {key}"}
    with httpx.Client() as client:
        for _ in range(3):  # warm up: scripts loaded, key and health caches filled
            assert client.post(f"{url}/v1/images/generations", json=BODY, headers=team_key).status_code == 200
        requests = 20
        before = trips.count
        for _ in range(requests):
            assert client.post(f"{url}/v1/images/generations", json=BODY, headers=team_key).status_code == 200
        per_request = (trips.count - before) / requests
        print(f"\nRedis round trips per team-key image request: {per_request:.2f}")
        # admit (1) + settle (1) + the success health record (1, off the response path); key and health
        # snapshots come from short caches.
        assert per_request <= 3.3

        before = trips.count
        for i in range(requests):
            headers = {**team_key, "Idempotency-Key": f"rt-{i}"}
            assert client.post(f"{url}/v1/images/generations", json=BODY, headers=headers).status_code == 200
        per_idempotent = (trips.count - before) / requests
        print(f"with an Idempotency-Key: {per_idempotent:.2f}")
        assert per_idempotent <= 5.3  # + begin (1) + complete (1)
