"""Simulated provider jobs whose status is derived from the clock, and the bounded store that holds them.

A job does no work and has no task: it records when it was created and how long it queues and runs, so
`phase(now)` is arithmetic. That keeps 10,000 in-flight jobs cheap (a few hundred bytes each, no timers).
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.simulators.control import FaultKind
    from providers.simulators.inputs import DataImage


class Phase(enum.Enum):
    """Where a job is in its life; each simulator maps this onto its provider's status words."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What a successful job produces: `count` images of one size and format."""

    width: int
    height: int
    count: int
    format: str  # the provider's own format word: fal `jpeg`, Replicate `jpg`
    seed: int
    prompt: str
    quality: int = 90


@dataclass(slots=True, eq=False)
class Job:
    """One submitted request. Mutable only through `cancel()`."""

    id: str
    model: str
    input: Any  # the input JSON as received (Replicate echoes it back)
    input_summary: Any  # the same with data: URIs replaced, for /_sim/stats
    created_wall: float  # epoch seconds: for timestamps shown to clients
    created_mono: float  # monotonic seconds: for the lifecycle
    queue_s: float
    run_s: float
    output: OutputSpec | None = None  # None when the input was invalid
    images: tuple[DataImage, ...] = ()
    fault: FaultKind | None = None  # a job-level fault decided at submit time
    error: Any = None  # provider-shaped rejection of the input, surfaced when the job finishes
    cancelled_mono: float | None = None
    _wakeup: asyncio.Event | None = field(default=None, repr=False)

    @property
    def started_mono(self) -> float:
        return self.created_mono + self.queue_s

    @property
    def finished_mono(self) -> float:
        return self.created_mono + self.queue_s + self.run_s

    @property
    def stuck(self) -> bool:
        return self.fault == "stuck"  # FaultKind is a StrEnum; comparing by value avoids an import cycle

    def phase(self, now: float) -> Phase:
        if self.cancelled_mono is not None:
            return Phase.CANCELLED
        if self.stuck or now < self.started_mono:
            return Phase.QUEUED
        if now < self.finished_mono:
            return Phase.RUNNING
        return Phase.DONE

    def terminal_at(self) -> float | None:
        """Monotonic time the job finishes by itself; None if it never will (stuck)."""
        if self.cancelled_mono is not None:
            return self.cancelled_mono
        return None if self.stuck else self.finished_mono

    def cancel(self, now: float) -> bool:
        """Cancel if still queued or running; False if it had already finished or been cancelled."""
        if self.phase(now) not in (Phase.QUEUED, Phase.RUNNING):
            return False
        self.cancelled_mono = now
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def wakeup(self) -> asyncio.Event:
        """An event set when the job is cancelled; created only for requests that wait on the job."""
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup

    def wall(self, mono: float) -> float:
        """Epoch seconds for a monotonic instant in this job's life."""
        return self.created_wall + (mono - self.created_mono)


class JobStore:
    """Jobs by id, oldest evicted first past `max_jobs` (like a provider expiring results)."""

    def __init__(self, max_jobs: int = 20_000, recent: int = 1000) -> None:
        self.max_jobs = max_jobs
        self._by_id: dict[str, Job] = {}
        self._recent: deque[Job] = deque(maxlen=recent)

    def add(self, job: Job) -> None:
        self._by_id[job.id] = job
        self._recent.append(job)
        while len(self._by_id) > self.max_jobs:
            del self._by_id[next(iter(self._by_id))]

    def get(self, job_id: str) -> Job | None:
        return self._by_id.get(job_id)

    def recent(self) -> list[Job]:
        """The most recently submitted jobs, oldest first."""
        return list(self._recent)

    def clear(self) -> None:
        self._by_id.clear()
        self._recent.clear()

    def __len__(self) -> int:
        return len(self._by_id)


def isoformat_utc(epoch: float) -> str:
    """RFC 3339 UTC with microseconds, the way both providers write timestamps."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
