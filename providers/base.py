"""The contract every provider adapter implements, in the spirit of `httpx.AsyncBaseTransport`.

An adapter takes one validated `ImageRequest` for one `Deployment` and returns a `ProviderResult`, or
raises one of the `gateway.exceptions.ProviderError` subclasses. It speaks exactly one provider protocol
and owns one shared `httpx.AsyncClient`. If the awaiting task is cancelled (deadline, client gone,
failover), the adapter cancels the provider-side job before letting the cancellation propagate, so no
upstream work is left running.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from gateway.catalog import Deployment
    from gateway.types import ImageRequest, ProviderJob, ProviderResult


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
    async def generate(self, deployment: Deployment, request: ImageRequest) -> ProviderResult:
        """Run `request` on `deployment`; raise only `ProviderError` subclasses."""

    @abc.abstractmethod
    async def cancel(self, job: ProviderJob) -> None:
        """Cancel a provider job; a no-op for a finished or unknown job, a `ProviderError` for other failures."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the shared HTTP client."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
