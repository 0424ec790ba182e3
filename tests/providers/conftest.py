"""Fixtures for provider tests: the fal and Replicate simulators, served over loopback HTTP.

`simulators` starts both simulators once per test session (queue 0 ms, run 20 ms); `sims` resets their
jobs, stats, faults and latency before each test and hands back the same object, so every test starts
from a clean slate without paying for a new server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from providers.simulators.server import SimulatorThread


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
