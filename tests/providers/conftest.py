"""Fixtures for provider tests: the fal and Replicate simulators, served over loopback HTTP.

`simulators` starts both simulators once per test session (queue 0 ms, run 20 ms); `sims` resets their
jobs, stats, faults and latency before each test and hands back the same object, so every test starts
from a clean slate without paying for a new server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.catalog import Catalog, Deployment
from providers.simulators.server import SimulatorThread
from tests.providers.harness import SimControl

CATALOG = Path(__file__).resolve().parents[2] / "config" / "models.yaml"


@pytest.fixture(scope="session")
def simulators() -> Iterator[SimulatorThread]:
    """Both simulators for the whole session; use `sims` in tests so state is reset first."""
    with SimulatorThread(queue_ms=0, run_ms=20) as running:
        yield running


@pytest.fixture
def sims(simulators: SimulatorThread) -> SimulatorThread:
    """The session's simulators after POST /_sim/reset on both (jobs, stats, faults, latency)."""
    simulators.reset()
    return simulators


@pytest.fixture(scope="session")
def klein() -> Deployment:
    """Replicate's deployment of FLUX.2 [klein] 4B, from the real catalog."""
    [deployment] = [d for d in Catalog.from_yaml(CATALOG).deployments if d.key == "replicate/flux.2-klein-4b"]
    return deployment


@pytest.fixture
async def replicate_control(sims: SimulatorThread) -> AsyncIterator[SimControl]:
    """The Replicate simulator's /_sim control API."""
    async with httpx.AsyncClient(timeout=5) as client:
        yield SimControl(client, sims.replicate_url)
