"""fal.ai queue API adapter: submit, poll the returned status URL, fetch the result, cancel.

Protocol notes live in shared/research/provider-apis.md §2; the parts we could not confirm are gathered
in `FalConventions`, the one place to correct them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from gateway.exceptions import (
    ContentPolicyViolation,
    ProviderError,
    ProviderRejectedInput,
    ProviderTimeout,
    ProviderUnavailable,
)
from gateway.types import (
    CancelOutcome,
    ImageFormat,
    ImageRequest,
    JobSucceeded,
    ProviderImage,
    ProviderJob,
    ProviderResult,
)
from providers.base import ProviderAdapter, ProviderEndpoint
from providers.http import Problem, ProviderHTTP, emit, poll_delays

if TYPE_CHECKING:
    from gateway.catalog import Deployment
    from gateway.types import Trace


@dataclass(frozen=True, slots=True)
class FalConventions:
    """fal protocol details that are unconfirmed or are our own choices, each with its source."""

    # §2.4 [DOC]: the only statuses fal reports; anything else is nonsense and ends the wait.
    pending_statuses: frozenset[str] = frozenset({"IN_QUEUE", "IN_PROGRESS"})
    completed_status: str = "COMPLETED"
    # §2.4 [SRC fal-js queue.ts]: logs=0|1; we never read logs, so ask for none.
    status_params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({"logs": "0"}))
    # §2.8 [SRC fal-js endpoints.ts]: fal's output_format names are the gateway's own.
    output_formats: Mapping[ImageFormat, str] = field(
        default_factory=lambda: MappingProxyType({f: f.value for f in ImageFormat})
    )
    # §2.8 [SRC]: defaults to true; sent anyway so a changed default cannot switch the checker off.
    enable_safety_checker: bool = True
    # §2.6: 202 CANCELLATION_REQUESTED [3P]; ALREADY_COMPLETED → 400, NOT_FOUND → 404 (codes UNCONFIRMED).
    # Any other 2xx is a cancel fal accepted; other statuses are errors.
    cancel_codes: Mapping[int, CancelOutcome] = field(
        default_factory=lambda: MappingProxyType({400: CancelOutcome.ALREADY_FINISHED, 404: CancelOutcome.NOT_FOUND})
    )
    # §2.6 [DOC]: the documented `status` words of a cancel answer. Since the codes are unconfirmed, a known
    # word in a 2xx or `cancel_codes` answer wins over its code (a 200 ALREADY_COMPLETED was billed).
    cancel_words: Mapping[str, CancelOutcome] = field(
        default_factory=lambda: MappingProxyType(
            {
                "CANCELLATION_REQUESTED": CancelOutcome.CANCELLED,
                "OK": CancelOutcome.CANCELLED,
                "ALREADY_COMPLETED": CancelOutcome.ALREADY_FINISHED,
                "NOT_FOUND": CancelOutcome.NOT_FOUND,
            }
        )
    )
    # [DOC fal.ai/docs/errors]: a 422 `detail[].type` meaning a content checker refused the input.
    content_policy_types: frozenset[str] = frozenset({"content_policy_violation"})
    # UNCONFIRMED: words in a free-text fal error that mean a content refusal (lower case).
    content_policy_markers: tuple[str, ...] = ("nsfw", "content_policy", "content policy")
    # [DOC fal request-errors]: `error_type` values on a failed job that mean it ran out of time.
    timeout_error_types: frozenset[str] = frozenset({"request_timeout", "startup_timeout"})
    # UNCONFIRMED: `error_type` values on a COMPLETED-with-error status meaning the input was refused.
    rejected_error_types: frozenset[str] = frozenset({"validation_error", "invalid_input", "input_error"})
    # Ours: how long a cancel may hold up a cancellation, and a safety net for jobs no deadline bounds.
    cancel_timeout: float = 2.0
    max_job_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class _Queued:
    """A submitted fal request and the URLs fal told us to use for it."""

    job: ProviderJob
    status_url: str
    response_url: str


class FalAdapter(ProviderAdapter):
    """FLUX.2 [klein] on fal's queue API (`POST {base}/{model}`, then the URLs the submit returns)."""

    name = "fal"

    def __init__(self, endpoint: ProviderEndpoint, *, conventions: FalConventions | None = None) -> None:
        self.endpoint = endpoint
        self.conventions = conventions or FalConventions()
        self._http = ProviderHTTP(self.name, endpoint, f"Key {endpoint.api_key}")

    async def generate(
        self,
        deployment: Deployment,
        request: ImageRequest,
        *,
        trace: Trace | None = None,
        deadline: float | None = None,  # fal's submit answers at once: nothing server-side to bound
    ) -> ProviderResult:
        """Submit, wait for COMPLETED, fetch the output; the fal job is cancelled if we are, or give up."""
        within = self.conventions.cancel_timeout
        submit = self._submit(deployment, request)
        queued = await self._http.start_job(submit, _job_of, self.cancel, within=within, trace=trace)
        try:
            status = await self._wait(queued)
        except (asyncio.CancelledError, ProviderError):
            # The job may still be running (or queued) at fal: stop paying for it.
            await self._http.cancel_jobs(self.cancel, (queued.job,), within=within, trace=trace)
            raise
        if not status.get("error"):
            emit(trace, JobSucceeded(queued.job))  # billed from here on, even if fetching its output fails
        output = await self._fetch_result(queued, status)
        return self._result(request, queued.job, status, output)

    async def cancel(self, job: ProviderJob) -> CancelOutcome:
        """PUT the job's cancel URL: CANCELLED (requested), ALREADY_FINISHED or NOT_FOUND, else ProviderError."""
        if not job.cancel_url:
            return CancelOutcome.NOT_FOUND  # fal says never to build the URL: no handle, no job to ask about
        conventions = self.conventions
        response = await self._http.send(
            "PUT", job.cancel_url, what="cancel", limits=httpx.Timeout(conventions.cancel_timeout), control=True
        )
        code = response.status_code
        if not response.is_success and code not in conventions.cancel_codes:
            raise self._http.status_error(response, "cancel", self._describe)
        word = _status_word(response.content)
        if word in conventions.cancel_words:
            return conventions.cancel_words[word]
        return conventions.cancel_codes.get(code, CancelOutcome.CANCELLED)

    async def aclose(self) -> None:
        """Close the shared HTTP client."""
        await self._http.aclose()

    # --- protocol steps ---------------------------------------------------------------------------------

    def _input(self, request: ImageRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "image_size": {"width": request.width, "height": request.height},
            "num_images": request.n,
            "output_format": self.conventions.output_formats[request.output_format],
            "enable_safety_checker": self.conventions.enable_safety_checker,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.images:
            body["image_urls"] = [image.data_uri() for image in request.images]
        return body

    async def _submit(self, deployment: Deployment, request: ImageRequest) -> _Queued:
        url = self._http.url(deployment.provider_model)
        response = await self._http.send("POST", url, what="submit", json=self._input(request))
        if not response.is_success:
            raise self._http.status_error(response, "submit", self._describe)
        body = self._http.json_object(response, "submit")
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise self._http.malformed("the submit answer has no request_id")
        # fal says never to build these URLs (status/result drop the model's sub-path), so use them as given.
        return _Queued(
            job=ProviderJob(self.name, request_id, self._http.provider_url(body.get("cancel_url"), "cancel_url")),
            status_url=self._http.provider_url(body.get("status_url"), "status_url"),
            response_url=self._http.provider_url(body.get("response_url"), "response_url"),
        )

    async def _wait(self, queued: _Queued) -> dict[str, Any]:
        """Poll the status URL with backoff until COMPLETED; returns that status body."""
        conventions = self.conventions
        for delay in poll_delays(self.endpoint, conventions.max_job_seconds):
            await asyncio.sleep(delay)
            response = await self._http.send(
                "GET", queued.status_url, what="status poll", params=conventions.status_params
            )
            if not response.is_success:
                raise self._http.status_error(response, "status poll", self._describe)
            body = self._http.json_object(response, "status poll")
            status = body.get("status")
            if status == conventions.completed_status:
                return body
            if not isinstance(status, str) or status not in conventions.pending_statuses:
                raise self._http.malformed(f"unknown job status {self._http.sanitize(status)!r}")
        raise ProviderTimeout(f"fal job did not complete within {conventions.max_job_seconds:g} s", provider=self.name)

    async def _fetch_result(self, queued: _Queued, status: dict[str, Any]) -> dict[str, Any]:
        # The model's own errors (a 422 naming the bad field) are served here, so fetch even a failed job.
        response = await self._http.send("GET", queued.response_url, what="result fetch")
        if not status.get("error"):
            if response.is_success:
                return self._http.json_object(response, "result fetch")
            raise self._http.status_error(response, "result fetch", self._describe)
        if response.status_code == 422:
            raise self._http.status_error(response, "result fetch", self._describe)
        # Otherwise the status's error_type says more than a replayed 400/500 would.
        raise self._job_error(status)

    def _result(
        self, request: ImageRequest, job: ProviderJob, status: dict[str, Any], output: dict[str, Any]
    ) -> ProviderResult:
        raw_images = output.get("images")
        if not isinstance(raw_images, list) or len(raw_images) != request.n:
            raise self._http.malformed(f"expected {request.n} images in the result")
        nsfw = output.get("has_nsfw_concepts")
        if isinstance(nsfw, list) and any(flag is True for flag in nsfw):
            flagged = sum(flag is True for flag in nsfw)
            raise ContentPolicyViolation(
                f"fal's safety checker flagged {flagged} of {len(nsfw)} images", provider=self.name
            )
        images = tuple(self._image(raw) for raw in raw_images)
        seed = output.get("seed")
        return ProviderResult(
            images=images,
            jobs=(job,),
            seed=seed if _is_int(seed) else request.seed,
            metrics=_metrics(status, output),
        )

    def _image(self, raw: Any) -> ProviderImage:
        if not isinstance(raw, dict):
            raise self._http.malformed("an image entry is not an object")
        width, height, content_type = raw.get("width"), raw.get("height"), raw.get("content_type")
        return ProviderImage(
            url=self._http.provider_url(raw.get("url"), "images[].url"),
            width=width if _is_int(width) else None,
            height=height if _is_int(height) else None,
            content_type=content_type if isinstance(content_type, str) else None,
        )

    # --- errors -----------------------------------------------------------------------------------------

    def _job_error(self, status: dict[str, Any]) -> ProviderError:
        """The error for a COMPLETED status that carries `error` / `error_type`."""
        text = self._http.sanitize(status.get("error"))
        error_type = status.get("error_type")
        if error_type in self.conventions.content_policy_types or self._mentions_content_policy(text):
            return ContentPolicyViolation(f"fal refused the content: {text}", provider=self.name)
        if error_type in self.conventions.rejected_error_types:
            return ProviderRejectedInput(f"fal rejected the input: {text}", provider=self.name)
        if error_type in self.conventions.timeout_error_types:
            return ProviderTimeout(f"fal job timed out: {text}", provider=self.name)
        return ProviderUnavailable(f"fal job failed: {text}", provider=self.name)

    def _describe(self, body: Any) -> Problem:
        """Read fal's two error shapes: FastAPI `detail: [{loc, msg, type}]`, or `detail: str`."""
        if not isinstance(body, dict):
            return Problem()
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            loc = first.get("loc")
            param = None
            if isinstance(loc, list) and len(loc) > 1 and loc[0] == "body":
                param = ".".join(str(part) for part in loc[1:])
            text = str(first.get("msg") or first.get("type") or "invalid input")
            if param:
                text = f"{param}: {text}"
            if len(detail) > 1:
                text += f" (and {len(detail) - 1} more)"
            policy = first.get("type") in self.conventions.content_policy_types
            return Problem(text, param, policy or self._mentions_content_policy(text))
        if isinstance(detail, str):
            policy = body.get("error_type") in self.conventions.content_policy_types
            return Problem(detail, None, policy or self._mentions_content_policy(detail))
        return Problem()

    def _mentions_content_policy(self, text: str) -> bool:
        lowered = text.lower()
        return any(marker in lowered for marker in self.conventions.content_policy_markers)


def _job_of(queued: _Queued) -> ProviderJob:
    return queued.job


def _status_word(content: bytes) -> str | None:
    """The `status` of a JSON object body, if it has a string one."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    word = body.get("status") if isinstance(body, dict) else None
    return word if isinstance(word, str) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _metrics(status: Mapping[str, Any], output: Mapping[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    reported = status.get("metrics")
    if isinstance(reported, dict):
        inference_time = reported.get("inference_time")
        if isinstance(inference_time, int | float) and not isinstance(inference_time, bool):
            metrics["inference_time"] = float(inference_time)
    timings = output.get("timings")
    if isinstance(timings, dict):
        metrics["timings"] = timings
    return metrics
