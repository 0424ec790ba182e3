"""What the adapter tests share: simulator control, a trace recorder, and request builders."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image

from gateway.types import (
    CancelOutcome,
    ImageFormat,
    ImageRequest,
    InputImage,
    JobCancelled,
    JobStarted,
    Mode,
    ProviderJob,
    TraceEvent,
)
from providers.base import ProviderEndpoint

SLOW_RUN_MS = 5000  # long enough that a job is still running when the adapter cancels it


class SimControl:
    """The simulator's /_sim control routes (plain HTTP, no auth)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.base = f"{base_url.rstrip('/')}/_sim"

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.client.request(method, f"{self.base}/{path}", json=body)
        response.raise_for_status()
        return response.json()

    async def fault(self, kind: str, on: str = "any", times: int | None = None, retry_after: float = 1) -> None:
        await self._call("POST", "faults", {"kind": kind, "on": on, "times": times, "retry_after": retry_after})

    async def slow_jobs(self) -> None:
        await self._call("POST", "config", {"run_ms": SLOW_RUN_MS})

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._call("GET", "stats")
        return stats

    async def wait_for(self, check: Callable[[dict[str, Any]], bool], within: float = 3) -> dict[str, Any]:
        """Stats once `check` holds, for effects that happen in the background (polled, bounded)."""
        for _ in range(int(within / 0.05)):
            stats = await self.stats()
            if check(stats):
                return stats
            await asyncio.sleep(0.05)
        return await self.stats()


class Events(list[TraceEvent]):
    """A trace callback that records what the adapter reports, in order."""

    def __call__(self, event: TraceEvent) -> None:
        self.append(event)

    def started(self) -> list[ProviderJob]:
        return [event.job for event in self if isinstance(event, JobStarted)]

    def cancelled(self) -> dict[ProviderJob, CancelOutcome]:
        return {event.job: event.outcome for event in self if isinstance(event, JobCancelled)}

    async def wait_for(self, count: int, within: float = 2) -> None:
        """Until `count` events arrived (some are reported in the background), or `within` s passed."""
        for _ in range(int(within / 0.01)):
            if len(self) >= count:
                return
            await asyncio.sleep(0.01)


def endpoint(base_url: str, api_key: str, *, read_timeout: float = 5) -> ProviderEndpoint:
    """A simulator endpoint with short timeouts and fast polling."""
    return ProviderEndpoint(
        base_url=base_url,
        api_key=api_key,
        connect_timeout=2,
        read_timeout=read_timeout,
        initial_poll_interval=0.005,
        max_poll_interval=0.02,
    )


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> InputImage:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return InputImage(data=buffer.getvalue(), format=ImageFormat.PNG, width=size[0], height=size[1])


def image_request(
    *,
    n: int = 1,
    size: tuple[int, int] = (1024, 1024),
    output_format: ImageFormat = ImageFormat.PNG,
    seed: int | None = None,
    images: tuple[InputImage, ...] = (),
) -> ImageRequest:
    return ImageRequest(
        request_id="req-test",
        mode=Mode.EDIT if images else Mode.GENERATE,
        prompt="a lighthouse at dusk",
        width=size[0],
        height=size[1],
        n=n,
        output_format=output_format,
        seed=seed,
        images=images,
    )
