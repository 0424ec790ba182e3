"""End-to-end fixtures: a real redis-server, the simulators and gateways as real processes on loopback."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from openai import OpenAI
from PIL import Image

from gateway.accounts.principal import ADMIN_TEAM
from gateway.child_server import ChildServer, python_module
from gateway.metering.keys import usage_stream
from gateway.redis_server import EmbeddedRedis, free_port
from gateway.settings import PROJECT_ROOT

ADMIN_KEY = "sk-e2e-admin-key"
FAL_KEY = "fal-e2e-secret-key-0123456789"
REPLICATE_KEY = "r8_e2e-secret-token-0123456789"


@dataclass
class Simulator:
    """Control of one simulator through its /_sim API."""

    url: str

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_sim/stats").raise_for_status().json()

    def calls(self) -> int:
        return sum(self.stats()["calls"].values())

    def fault(self, kind: str, on: str = "any", times: int | None = 1, **extra: Any) -> None:
        httpx.post(f"{self.url}/_sim/faults", json={"kind": kind, "on": on, "times": times, **extra}).raise_for_status()

    def configure(self, **config: int) -> None:
        httpx.post(f"{self.url}/_sim/config", json=config).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_sim/reset").raise_for_status()


@dataclass
class Simulators:
    fal: Simulator
    replicate: Simulator

    def total_calls(self) -> int:
        return self.fal.calls() + self.replicate.calls()


@dataclass
class Gateway:
    url: str
    key: str
    process: ChildServer
    env: dict[str, str] = field(default_factory=dict)

    def client(self, **options: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, **options)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def simulator_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulators]:
    fal_port, replicate_port = free_port(), free_port()
    args = ["--host", "127.0.0.1", "--fal-port", str(fal_port), "--replicate-port", str(replicate_port)]
    process = ChildServer(
        "simulators",
        python_module("providers.simulators", *args, "--queue-ms", "0", "--run-ms", "20"),
        [f"http://127.0.0.1:{fal_port}/_sim/stats", f"http://127.0.0.1:{replicate_port}/_sim/stats"],
        env={"FAL_KEY": FAL_KEY, "REPLICATE_API_TOKEN": REPLICATE_KEY},
        log_dir=tmp_path_factory.mktemp("logs"),
    ).start()
    yield Simulators(Simulator(f"http://127.0.0.1:{fal_port}"), Simulator(f"http://127.0.0.1:{replicate_port}"))
    process.stop()


@pytest.fixture
def sims(simulator_processes: Simulators, redis_client: redis.Redis) -> Simulators:
    """The simulators, reset to a clean state for this test, and every deployment's shared health cleared."""
    simulator_processes.fal.reset()
    simulator_processes.replicate.reset()
    for key in redis_client.scan_iter("health:*"):
        redis_client.delete(key)
    return simulator_processes


@pytest.fixture(scope="session")
def start_gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis, simulator_processes: Simulators
) -> Iterator[Callable[..., Gateway]]:
    """Start a gateway process with optional environment overrides; all are stopped at session end."""
    started: list[Gateway] = []
    log_dir = tmp_path_factory.mktemp("gateways")

    def start(**overrides: str) -> Gateway:
        port = free_port()
        env = {
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_FAL_BASE_URL": simulator_processes.fal.url,
            "GATEWAY_REPLICATE_BASE_URL": simulator_processes.replicate.url,
            "FAL_KEY": FAL_KEY,
            "REPLICATE_API_TOKEN": REPLICATE_KEY,
            "GATEWAY_PROVIDER_INITIAL_POLL_INTERVAL_S": "0.01",
            "GATEWAY_PROVIDER_MAX_POLL_INTERVAL_S": "0.05",
            "GATEWAY_LOG_LEVEL": "info",
            "GATEWAY_HEALTH_CACHE_TTL_S": "0",  # tests reset health in Redis between cases
            **overrides,
        }
        process = ChildServer(
            f"gateway-{len(started)}",
            python_module("gateway", "serve", "--port", str(port)),
            [f"http://127.0.0.1:{port}/readyz"],
            env=env,
            log_dir=log_dir,
        ).start()
        gateway = Gateway(f"http://127.0.0.1:{port}", env["GATEWAY_ADMIN_KEY"], process, env)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.process.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway()


@pytest.fixture
def client(gateway: Gateway, sims: Simulators) -> OpenAI:
    return gateway.client()


@dataclass
class UsageLog:
    """Reads a team's usage stream; `mark()` then `since_mark()` isolates one test's records.

    `since_mark()` flattens each request's record into one row per provider attempt (the record's fields
    plus the attempt's deployment, outcome, disposition and cost), which is what most assertions are about.
    """

    redis: redis.Redis
    team: str = ADMIN_TEAM
    last_id: str = "0-0"

    def mark(self) -> None:
        entries = self.redis.xrevrange(usage_stream(self.team), count=1)
        self.last_id = entries[0][0] if entries else "0-0"

    def requests(self) -> list[dict[str, str]]:
        return [fields for _, fields in self.redis.xrange(usage_stream(self.team), min=f"({self.last_id}")]

    def since_mark(self) -> list[dict[str, str]]:
        rows = []
        for record in self.requests():
            for attempt in json.loads(record["attempts_json"]):
                rows.append({**record, **{k: str(v) for k, v in attempt.items() if k != "jobs"}})
        return rows


@pytest.fixture
def usage(redis_client: redis.Redis) -> UsageLog:
    log = UsageLog(redis_client)
    log.mark()
    return log


def catalog_with(tmp_dir: Path, **routing: Any) -> str:
    """A copy of the real catalog with the model's routing block changed; returns its path."""
    raw = yaml.safe_load((PROJECT_ROOT / "config" / "models.yaml").read_text())
    raw["models"][0]["routing"] = {**raw["models"][0].get("routing", {}), **routing}
    path = tmp_dir / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def solid_png(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()
