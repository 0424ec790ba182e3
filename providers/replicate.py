"""Replicate predictions API adapter: create (optionally blocking), poll `urls.get`, cancel.

Replicate's klein model makes one image per prediction, so a request for n images runs n predictions
concurrently. Protocol notes live in shared/research/provider-apis.md §3; the parts we could not confirm
are gathered in `ReplicateConventions`, the one place to correct them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import httpx

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
class ReplicateConventions:
    """Replicate protocol details that are unconfirmed or are our own choices, each with its source."""

    # §3.2 [DOC]: `Prefer: wait=N` holds the create open up to N s (at most 60); 0 sends no header.
    prefer_wait: int = 60
    # §3.2: 201 Created [3P]; 200 UNCONFIRMED but harmless to accept.
    create_statuses: frozenset[int] = frozenset({200, 201})
    # §3.3 [SRC replicate-python prediction.py]: the status values.
    pending_statuses: frozenset[str] = frozenset({"starting", "processing"})
    succeeded_status: str = "succeeded"
    failed_status: str = "failed"
    canceled_status: str = "canceled"
    # §3.6 [DOC]: the default is "jpg" (not "jpeg"); png and webp are UNCONFIRMED (sibling models have them).
    output_formats: Mapping[ImageFormat, str] = field(
        default_factory=lambda: MappingProxyType(
            {ImageFormat.JPEG: "jpg", ImageFormat.PNG: "png", ImageFormat.WEBP: "webp"}
        )
    )
    # §3.5 [3P]: a blocked prediction fails with an error like "NSFW content detected"; wording UNCONFIRMED.
    content_policy_markers: tuple[str, ...] = ("nsfw",)
    # §3.4: cancel answers with the prediction; its status says whether it had already succeeded (and is
    # billed). The answer for a finished prediction is UNCONFIRMED (the simulator says 200, unchanged); if
    # Replicate refuses with one of these codes instead, it finished first, perhaps billed: assume so.
    cancel_finished_codes: frozenset[int] = frozenset({400, 409, 422})
    cancel_not_found_codes: frozenset[int] = frozenset({404})
    # Ours: how long a cancel may hold up a cancellation, and a safety net for jobs no deadline bounds.
    cancel_timeout: float = 2.0
    max_job_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class _Prediction:
    """The parts of a prediction object the adapter uses, checked."""

    job: ProviderJob
    status: str
    get_url: str
    body: Mapping[str, Any]


class ReplicateAdapter(ProviderAdapter):
    """FLUX.2 [klein] on Replicate (`POST {base}/v1/models/{model}/predictions`, one per image)."""

    name = "replicate"

    def __init__(self, endpoint: ProviderEndpoint, *, conventions: ReplicateConventions | None = None) -> None:
        self.endpoint = endpoint
        self.conventions = conventions or ReplicateConventions()
        if not 0 <= self.conventions.prefer_wait <= 60:
            raise ValueError("prefer_wait must be between 0 and 60 seconds")
        self._http = ProviderHTTP(self.name, endpoint, f"Bearer {endpoint.api_key}")

    async def generate(
        self,
        deployment: Deployment,
        request: ImageRequest,
        *,
        trace: Trace | None = None,
        deadline: float | None = None,
    ) -> ProviderResult:
        """Run `request.n` predictions concurrently; if one fails, the rest are cancelled at Replicate."""
        inputs = self._inputs(deployment, request)
        wait = self._prefer_wait(deadline)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._predict(deployment, i, trace, wait)) for i in inputs]
        except ExceptionGroup as failures:
            provider_errors, others = failures.split(ProviderError)
            if provider_errors is None or others is not None:
                raise  # a bug, not a provider failure: keep the whole story
            # Usually one failure (the others were then cancelled); the gateway wants a single error.
            raise _first(provider_errors) from None
        predictions = [task.result() for task in tasks]
        images = tuple(self._image(request, prediction) for prediction in predictions)
        predict_times = [t for p in predictions if (t := _predict_time(p.body)) is not None]
        return ProviderResult(
            images=images,
            jobs=tuple(p.job for p in predictions),
            seed=request.seed,
            metrics={"predict_time": max(predict_times)} if predict_times else {},
        )

    async def cancel(self, job: ProviderJob) -> CancelOutcome:
        """POST the prediction's cancel URL: CANCELLED, ALREADY_FINISHED or NOT_FOUND, else ProviderError."""
        if not job.cancel_url:
            return CancelOutcome.NOT_FOUND  # no handle to ask with: not a prediction we can name
        conventions = self.conventions
        response = await self._http.send(
            "POST", job.cancel_url, what="cancel", limits=httpx.Timeout(conventions.cancel_timeout), control=True
        )
        if response.status_code in conventions.cancel_not_found_codes:
            return CancelOutcome.NOT_FOUND
        if response.status_code in conventions.cancel_finished_codes:
            return CancelOutcome.ALREADY_FINISHED
        if not response.is_success:
            raise self._http.status_error(response, "cancel", self._describe)
        # The prediction as it now stands. Only a succeeded one produced (and bills) output; a canceled or
        # failed one did not, and a still-pending one has had its cancel accepted.
        status = self._http.json_object(response, "cancel").get("status")
        if status == conventions.succeeded_status:
            return CancelOutcome.ALREADY_FINISHED
        stopped = {*conventions.pending_statuses, conventions.failed_status, conventions.canceled_status}
        if isinstance(status, str) and status in stopped:
            return CancelOutcome.CANCELLED
        raise self._http.malformed(f"unknown prediction status {self._http.sanitize(status)!r}")

    async def aclose(self) -> None:
        """Close the shared HTTP client."""
        await self._http.aclose()

    # --- protocol steps ---------------------------------------------------------------------------------

    def _inputs(self, deployment: Deployment, request: ImageRequest) -> list[dict[str, Any]]:
        """One prediction input per requested image."""
        try:
            size_params = deployment.sizes.params_for(request.width, request.height)
        except KeyError:
            raise ProviderRejectedInput(
                f"replicate cannot produce {request.width}x{request.height} images", provider=self.name, param="size"
            ) from None
        base: dict[str, Any] = {
            "prompt": request.prompt,
            **size_params,
            "output_format": self.conventions.output_formats[request.output_format],
        }
        if request.images:
            base["images"] = [image.data_uri() for image in request.images]
        inputs = []
        for index in range(request.n):
            one = dict(base)
            if request.seed is not None:
                one["seed"] = request.seed + index  # same seed n times would give n identical images
            inputs.append(one)
        return inputs

    def _prefer_wait(self, deadline: float | None) -> int:
        """Seconds for `Prefer: wait`: the convention, but never past the caller's deadline.

        A create held open past the point the caller gives up has no job id to cancel until it answers.
        """
        wait = self.conventions.prefer_wait
        if deadline is None or not wait:
            return wait
        left = deadline - asyncio.get_running_loop().time()
        return max(1, min(wait, math.ceil(left)))

    async def _predict(
        self, deployment: Deployment, input_: dict[str, Any], trace: Trace | None, wait: int
    ) -> _Prediction:
        """Create one prediction and wait until it is terminal; cancel it if we are cancelled or give up."""
        within = self.conventions.cancel_timeout
        create = self._create(deployment, input_, wait)
        prediction = await self._http.start_job(create, _job_of, self.cancel, within=within, trace=trace)
        if prediction.status in self.conventions.pending_statuses:
            try:
                prediction = await self._wait(prediction)
            except (asyncio.CancelledError, ProviderError):
                await self._http.cancel_jobs(self.cancel, (prediction.job,), within=within, trace=trace)
                raise
        if prediction.status == self.conventions.succeeded_status:
            emit(trace, JobSucceeded(prediction.job))  # billed, even if a sibling prediction fails
        return self._check_outcome(prediction)

    async def _create(self, deployment: Deployment, input_: dict[str, Any], wait: int) -> _Prediction:
        headers = {"Prefer": f"wait={wait}"} if wait else {}
        # The server may hold the answer for `wait` seconds before the usual read budget starts to matter.
        limits = httpx.Timeout(self.endpoint.read_timeout + wait, connect=self.endpoint.connect_timeout)
        response = await self._http.send(
            "POST",
            self._http.url(f"v1/models/{deployment.provider_model}/predictions"),
            what="create",
            json={"input": input_},
            headers=headers,
            limits=limits,
        )
        if not response.is_success:
            raise self._http.status_error(response, "create", self._describe)
        if response.status_code not in self.conventions.create_statuses:
            raise self._http.malformed(f"create answered HTTP {response.status_code}")
        return self._parse(self._http.json_object(response, "create"))

    async def _wait(self, prediction: _Prediction) -> _Prediction:
        """Poll `urls.get` with backoff until the prediction is terminal."""
        for delay in poll_delays(self.endpoint, self.conventions.max_job_seconds):
            await asyncio.sleep(delay)
            response = await self._http.send("GET", prediction.get_url, what="status poll")
            if not response.is_success:
                raise self._http.status_error(response, "status poll", self._describe)
            prediction = self._parse(self._http.json_object(response, "status poll"))
            if prediction.status not in self.conventions.pending_statuses:
                return prediction
        raise ProviderTimeout(
            f"replicate prediction did not finish within {self.conventions.max_job_seconds:g} s",
            provider=self.name,
        )

    def _parse(self, body: dict[str, Any]) -> _Prediction:
        conventions = self.conventions
        known = {*conventions.pending_statuses, conventions.succeeded_status}
        known |= {conventions.failed_status, conventions.canceled_status}
        prediction_id, status, urls = body.get("id"), body.get("status"), body.get("urls")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise self._http.malformed("the prediction has no id")
        if not isinstance(status, str) or status not in known:  # a JSON list would not even hash
            raise self._http.malformed(f"unknown prediction status {self._http.sanitize(status)!r}")
        if not isinstance(urls, dict):
            raise self._http.malformed("the prediction has no urls")
        cancel_url = self._http.provider_url(urls.get("cancel"), "urls.cancel")
        return _Prediction(
            job=ProviderJob(self.name, prediction_id, cancel_url),
            status=status,
            get_url=self._http.provider_url(urls.get("get"), "urls.get"),
            body=body,
        )

    def _check_outcome(self, prediction: _Prediction) -> _Prediction:
        """Raise for a prediction that did not succeed."""
        conventions = self.conventions
        if prediction.status == conventions.succeeded_status:
            return prediction
        if prediction.status == conventions.canceled_status:
            # We cancel only on our way out, so this was someone else (or Replicate itself): try elsewhere.
            raise ProviderUnavailable("replicate canceled the prediction", provider=self.name)
        error = self._http.sanitize(prediction.body.get("error") or "no error message")
        if self._mentions_content_policy(error):
            raise ContentPolicyViolation(f"replicate refused the content: {error}", provider=self.name)
        # A model error is usually transient on Replicate's side; another attempt may well succeed.
        raise ProviderUnavailable(f"replicate prediction failed: {error}", provider=self.name)

    def _image(self, request: ImageRequest, prediction: _Prediction) -> ProviderImage:
        output = prediction.body.get("output")
        urls: Sequence[Any] = [output] if isinstance(output, str) else output if isinstance(output, list) else []
        if len(urls) != 1:
            raise self._http.malformed("a succeeded prediction should have exactly one output URL")
        # Replicate reports no pixel size; the gateway's size table says what the tier should produce.
        return ProviderImage(
            url=self._http.provider_url(urls[0], "output"), content_type=request.output_format.content_type
        )

    # --- errors -----------------------------------------------------------------------------------------

    def _describe(self, body: Any) -> Problem:
        """Read Replicate's problem+json: `detail`/`title`, and `invalid_fields[].field` for a 422."""
        if not isinstance(body, dict):
            return Problem()
        text = body.get("detail") or body.get("title")
        detail = str(text) if text else None
        param = None
        fields = body.get("invalid_fields")
        if isinstance(fields, list) and fields and isinstance(fields[0], dict):
            name = fields[0].get("field")
            if isinstance(name, str) and name:
                param = name.removeprefix("input.")
        return Problem(detail, param, detail is not None and self._mentions_content_policy(detail))

    def _mentions_content_policy(self, text: str) -> bool:
        lowered = text.lower()
        return any(marker in lowered for marker in self.conventions.content_policy_markers)


def _job_of(prediction: _Prediction) -> ProviderJob:
    return prediction.job


def _first(group: BaseExceptionGroup[ProviderError]) -> ProviderError:
    """The first provider error in a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _predict_time(body: Mapping[str, Any]) -> float | None:
    metrics = body.get("metrics")
    value = metrics.get("predict_time") if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
