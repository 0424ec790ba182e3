"""Connection slots in `ProviderHTTP`: requests queue for a slot outside httpcore's pool, cancels never do.

A Replicate adapter with 10 connections (9 slots, 1 kept for cancels) against the simulator; status polls
that hang hold every slot, as slow providers do under load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from gateway.catalog import Deployment
from gateway.exceptions import ProviderTimeout
from gateway.types import CancelOutcome
from providers.replicate import ReplicateAdapter, ReplicateConventions
from providers.simulators.server import SimulatorThread
from tests.providers.harness import Events, SimControl, endpoint, image_request

CONNECTIONS, SLOTS = 10, 9
HANG_S = 1.5  # the adapter's read timeout: how long a hanging poll holds its slot


@pytest.fixture
async def replicate(sims: SimulatorThread) -> AsyncIterator[ReplicateAdapter]:
    small_pool = replace(
        endpoint(sims.replicate_url, sims.replicate_key, read_timeout=HANG_S), max_connections=CONNECTIONS
    )
    adapter = ReplicateAdapter(small_pool, conventions=ReplicateConventions(prefer_wait=0))  # every job polled
    try:
        yield adapter
    finally:
        await adapter.aclose()


async def _hold_every_slot(
    replicate: ReplicateAdapter, klein: Deployment, replicate_control: SimControl
) -> tuple[list[asyncio.Task[object]], Events]:
    """SLOTS generations whose status polls hang: each holds a slot (and a connection) for HANG_S."""
    await replicate_control.slow_jobs()
    await replicate_control.fault("hang", on="get")
    events = Events()
    tasks = [asyncio.create_task(replicate.generate(klein, image_request(), trace=events)) for _ in range(SLOTS)]
    stats = await replicate_control.wait_for(lambda s: s["calls"].get("get", 0) >= SLOTS)
    assert stats["calls"]["get"] == SLOTS
    return tasks, events


async def test_a_cancel_does_not_wait_behind_held_connections(
    replicate: ReplicateAdapter, klein: Deployment, replicate_control: SimControl
) -> None:
    holders, events = await _hold_every_slot(replicate, klein, replicate_control)
    waiting = asyncio.create_task(replicate.generate(klein, image_request()))  # queued for a slot
    await asyncio.sleep(0.1)

    started = time.monotonic()
    outcome = await replicate.cancel(events.started()[0])
    assert time.monotonic() - started < 0.5, "the cancel used a reserved connection at once"
    assert outcome is CancelOutcome.CANCELLED
    assert (await replicate_control.stats())["calls"]["create"] == SLOTS, "the queued request has not been sent"

    waiting.cancel()
    for task in [*holders, waiting]:
        with pytest.raises((ProviderTimeout, asyncio.CancelledError)):
            await task


async def test_a_request_cancelled_while_waiting_for_a_slot_is_never_sent(
    replicate: ReplicateAdapter, klein: Deployment, replicate_control: SimControl
) -> None:
    holders, _ = await _hold_every_slot(replicate, klein, replicate_control)
    events = Events()
    waiting = asyncio.create_task(replicate.generate(klein, image_request(), trace=events))
    await asyncio.sleep(0.1)
    waiting.cancel()  # the client left while its request waited for a connection
    with pytest.raises(asyncio.CancelledError):
        await waiting

    for task in holders:  # the hanging polls time out and free every slot
        with pytest.raises(ProviderTimeout):
            await task
    await asyncio.sleep(0.3)
    stats = await replicate_control.stats()
    assert stats["calls"]["create"] == SLOTS, "no create was sent later for the request that was cancelled"
    assert events == []
