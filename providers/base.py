"""The contract every provider adapter implements, in the spirit of `httpx.AsyncBaseTransport`.

An adapter takes one validated `ImageRequest` for one `Deployment` and returns a `ProviderResult`, or
raises one of the `gateway.exceptions.ProviderError` subclasses. It speaks exactly one provider protocol
and owns one shared `httpx.AsyncClient`. If the awaiting task is cancelled (deadline, client gone,
failover), the adapter cancels the provider-side job before letting the cancellation propagate, so no
upstream work is left running.

Provider-side events go to the optional `trace` callback (like httpx's `trace` extension), called
synchronously and never awaited:

- `JobStarted(job)` as soon as the provider has answered a create/submit with the job's handle.
- `JobSucceeded(job)` once the provider says the job produced its output (so it bills it), before the
  output is fetched: metering then counts the job even if what follows fails.
- `JobCancelled(job, outcome)` exactly once for every job the adapter asks the provider to cancel (we
  were cancelled, we gave up after a `ProviderError`, or a sibling job failed), with `cancel`'s outcome,
  or FAILED if the cancel raised or took longer than the adapter's cancel timeout. It is called after
  the cancel is done, so a raising callback cannot stop the cleanup (its error is not swallowed).

All usually arrive before `generate` returns or raises. One case arrives later: if we are cancelled
while a create/submit is still in flight, `generate` raises CancelledError at once, the request carries
on in the background, and JobStarted then JobCancelled follow once it answers (at most the request's
own timeout plus the cancel timeout later). Likewise, if `generate` is cancelled again while it waits
for a cancel, that JobCancelled follows within the cancel timeout.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from gateway.catalog import Deployment
    from gateway.types import CancelOutcome, ImageRequest, ProviderJob, ProviderResult, Trace


@dataclass(frozen=True, slots=True)
class ProviderEndpoint:
    """Where and how to reach one provider: real service or local simulator, same code path."""

    base_url: str
    api_key: str = field(repr=False)  # never printed: keep it out of reprs, logs and errors
    connect_timeout: float = 5.0
    read_timeout: float = 75.0
    # Upper bound for one status poll interval; adapters back off up to it. Tests shrink it.
    max_poll_interval: float = 1.0
    initial_poll_interval: float = 0.05
    max_connections: int = 1000


class ProviderAdapter(abc.ABC):
    """One provider protocol: image request in, images and provider bookkeeping out."""

    name: ClassVar[str]

    @abc.abstractmethod
    async def generate(
        self,
        deployment: Deployment,
        request: ImageRequest,
        *,
        trace: Trace | None = None,
        deadline: float | None = None,
    ) -> ProviderResult:
        """Run `request` on `deployment`, reporting job events to `trace`; raise only `ProviderError` subclasses.

        `deadline` (event-loop time) is when the caller will give up: a hint for server-side waits such as
        Replicate's `Prefer: wait`, so an abandoned request's job handle arrives in time to cancel it. The
        caller enforces it by cancelling the task.
        """

    @abc.abstractmethod
    async def cancel(self, job: ProviderJob) -> CancelOutcome:
        """Cancel a provider job and say what the provider answered; a `ProviderError` if the cancel failed."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the shared HTTP client."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
