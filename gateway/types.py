"""Typed values that flow through the request path, shared by the gateway core and provider adapters.

Everything here is a frozen dataclass: built once at the HTTP edge (or by an adapter), never mutated.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Mode(enum.StrEnum):
    """What a request asks a model to do."""

    GENERATE = "generate"
    EDIT = "edit"


class ImageFormat(enum.StrEnum):
    """Output/input image encodings the gateway speaks (OpenAI's names)."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @classmethod
    def from_content_type(cls, content_type: str) -> ImageFormat | None:
        """`image/jpeg` → JPEG; also accepts `image/jpg`. None when unknown."""
        subtype = content_type.split(";", 1)[0].strip().lower().removeprefix("image/")
        if subtype == "jpg":
            subtype = "jpeg"
        try:
            return cls(subtype)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class InputImage:
    """A decode-checked reference image uploaded for an edit."""

    data: bytes
    format: ImageFormat
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def data_uri(self) -> str:
        """The image as a `data:` URI, which both fal and Replicate accept in place of a URL."""
        import base64

        return f"data:{self.format.content_type};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A validated image request, independent of any provider."""

    request_id: str
    mode: Mode
    prompt: str
    width: int
    height: int
    n: int = 1
    output_format: ImageFormat = ImageFormat.PNG
    seed: int | None = None
    images: tuple[InputImage, ...] = ()
    user: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True, slots=True)
class ProviderImage:
    """One image a provider produced: where it lives and what it is."""

    url: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderJob:
    """A handle on work started at a provider, enough to cancel it or look it up later."""

    provider: str
    job_id: str
    cancel_url: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """What an adapter returns for one ImageRequest: the images plus the provider's own bookkeeping."""

    images: tuple[ProviderImage, ...]
    jobs: tuple[ProviderJob, ...]
    seed: int | None = None
    # Provider-reported timings/metrics, for logs and (later) the latency model. Never used for billing.
    metrics: dict[str, Any] = field(default_factory=dict)


class CancelOutcome(enum.StrEnum):
    """What a provider said when asked to cancel a job."""

    CANCELLED = "cancelled"  # stopped before it produced (and billed) anything
    ALREADY_FINISHED = "already_finished"  # it completed first: the provider bills it
    NOT_FOUND = "not_found"  # the provider does not know the job (expired or never started)
    FAILED = "failed"  # the cancel itself failed; the job may still run and bill


@dataclass(frozen=True, slots=True)
class JobStarted:
    """Trace event: the provider accepted a job (its handle is now known)."""

    job: ProviderJob


@dataclass(frozen=True, slots=True)
class JobCancelled:
    """Trace event: the adapter asked the provider to cancel a job, with the provider's answer."""

    job: ProviderJob
    outcome: CancelOutcome


@dataclass(frozen=True, slots=True)
class JobSucceeded:
    """Trace event: the provider says a job produced its output, so it bills it whatever we do next."""

    job: ProviderJob


TraceEvent = JobStarted | JobSucceeded | JobCancelled
# Like httpx's `trace` extension: adapters report provider-side events to whoever dispatched the attempt.
Trace = Callable[[TraceEvent], None]
