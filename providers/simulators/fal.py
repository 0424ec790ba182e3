"""A local fal.ai queue API (queue.fal.run) serving FLUX.2 [klein] 4B, for tests and benchmarks.

    POST /{owner}/{app}/{path...}                     submit; body = the raw model input
    GET  /{owner}/{app}/requests/{id}/status?logs=1   202 IN_QUEUE / IN_PROGRESS, 200 COMPLETED
    GET  /{owner}/{app}/requests/{id}                 the model's answer: 200 v4Output, 422, 500, ...
    PUT  /{owner}/{app}/requests/{id}/cancel          202 CANCELLATION_REQUESTED / 400 / 404
    GET  /files/{id}/{index}.{png|jpeg|webp}          the image bytes (no auth, like fal's CDN)
    /_sim/...                                         control routes, see providers.simulators.control

Status, result and cancel use only owner/app (`/fal-ai/flux-2/requests/...`), as fal does; the long form
(`/fal-ai/flux-2/klein/4b/requests/...`) is a 404 so adapters that build URLs themselves fail loudly.
A job's status comes from the clock: IN_QUEUE for queue_ms, IN_PROGRESS for run_ms, then COMPLETED.

Cancelling (UNCONFIRMED what real fal shows afterwards): fal has only three statuses, and fal_client
raises on any other, so a cancelled job reports COMPLETED with `error`/`error_type` set (see
FalConventions) and its result GET answers 400 with the same error. Cancelling it again is idempotent
(202); cancelling a job that completed on its own is 400 ALREADY_COMPLETED.
"""

from __future__ import annotations

import base64
import hmac
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from providers.simulators.control import (
    Fault,
    FaultKind,
    Latency,
    SimulatorControl,
    hang_response,
    json_response,
    malformed_response,
)
from providers.simulators.fal_schema import KleinLimits, validate_klein_input
from providers.simulators.inputs import summarize_input
from providers.simulators.jobs import Job, Phase, isoformat_utc
from providers.simulators.render import CONTENT_TYPES, RenderSpec

OPS = ("submit", "status", "result", "cancel", "file")
FILE_EXTENSIONS = ("png", "jpeg", "webp")
NGINX_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True)
class FalConventions:
    """fal details the research could not confirm (provider-apis.md §2, §5.3), kept in one place."""

    # Endpoint id → whether it is the edit endpoint.
    endpoints: Mapping[str, bool] = field(
        default_factory=lambda: MappingProxyType({"fal-ai/flux-2/klein/4b": False, "fal-ai/flux-2/klein/4b/edit": True})
    )
    limits: KleinLimits = field(default_factory=KleinLimits)
    submit_status: int = 200  # UNCONFIRMED (3P says 200)
    early_result_status: int = 400  # UNCONFIRMED: result fetched before COMPLETED
    early_result_detail: str = "Request is still in progress"
    already_completed_status: int = 400  # UNCONFIRMED cancel codes
    not_found_status: int = 404
    missing_key_detail: str = "Missing authorization header"  # UNCONFIRMED 401 wording
    invalid_key_detail: str = "Invalid API key"
    cancelled_error: str = "Request was cancelled by the client"  # UNCONFIRMED (see module docstring)
    cancelled_error_type: str = "request_cancelled"
    cancelled_result_status: int = 400
    model_error_detail: str = "Model inference failed (simulated model_error)"
    model_error_type: str = "internal_server_error"
    validation_fault_error: tuple[dict[str, Any], ...] = (
        {"loc": ["body", "prompt"], "msg": "Simulated validation failure", "type": "value_error"},
    )
    # Shown as IN_QUEUE's queue_position: remaining queue time divided by this (a "job" ahead per slot).
    queue_position_ms: int = 100
    hang_max_s: float = 3600.0


class FalSimulator:
    """The fal queue simulator: holds its state and serves it as a Starlette app (`.app`)."""

    def __init__(
        self,
        *,
        key: str,
        queue_ms: int = 50,
        run_ms: int = 200,
        faults: tuple[Fault, ...] = (),
        public_url: str | None = None,
        conventions: FalConventions | None = None,
    ) -> None:
        self._key = key.encode()
        self.public_url = public_url.rstrip("/") if public_url else None
        self.conventions = conventions or FalConventions()
        self.control = SimulatorControl(ops=OPS, submit_op="submit", latency=Latency(queue_ms, run_ms), faults=faults)
        routes = [
            *self.control.routes(self._describe),
            Route("/files/{job_id}/{name}", self.file, methods=["GET"]),
            Route("/{owner}/{app}/requests/{request_id}/status", self.status, methods=["GET"]),
            Route("/{owner}/{app}/requests/{request_id}/cancel", self.cancel, methods=["PUT"]),
            Route("/{owner}/{app}/requests/{request_id}", self.result, methods=["GET"]),
            Route("/{endpoint:path}", self.submit, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})

    # --- handlers -------------------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        """POST /{endpoint}: queue a job (input errors are kept for the result GET, as fal does)."""
        if request.method != "POST":
            return _not_found()
        self.control.count("submit")
        if (denied := self._deny(request)) is not None:
            return denied
        endpoint = request.path_params["endpoint"].strip("/")
        if endpoint not in self.conventions.endpoints:
            return json_response({"detail": f"Application '{endpoint}' not found"}, 404)
        fault = self.control.faults.take("submit")
        if fault is not None and not fault.kind.job_level:
            return await self._fault_response(fault, request)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            detail = [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
            return json_response({"detail": detail}, 422)

        checked = validate_klein_input(body, edit=self.conventions.endpoints[endpoint], limits=self.conventions.limits)
        latency = self.control.latency
        job = Job(
            id=str(uuid.uuid4()),
            model=endpoint,
            input=body,
            input_summary=summarize_input(body, checked.decoded),
            created_wall=time.time(),
            created_mono=self.control.now(),
            queue_s=latency.queue_ms / 1000,
            run_s=latency.run_ms / 1000,
            output=checked.output,
            images=checked.images,
            fault=fault.kind if fault is not None else None,
            error=checked.errors or None,
        )
        self.control.jobs.add(job)
        body = {**self._urls(request, job), "request_id": job.id, "status": "IN_QUEUE", "queue_position": 0}
        return json_response(body, self.conventions.submit_status, {"x-fal-request-id": job.id})

    async def status(self, request: Request) -> Response:
        """GET .../requests/{id}/status: 202 IN_QUEUE / IN_PROGRESS, 200 COMPLETED."""
        job, early = await self._begin(request, "status")
        if job is None:
            return early or _request_not_found()
        now = self.control.now()
        phase = job.phase(now)
        with_logs = request.query_params.get("logs", "0").lower() in ("1", "true")
        body: dict[str, Any] = {**self._urls(request, job), "request_id": job.id}
        code = 202
        if phase is Phase.QUEUED:
            remaining_ms = 1000 * (job.started_mono - now)
            position = 0 if job.stuck else math.ceil(max(0.0, remaining_ms) / self.conventions.queue_position_ms)
            body.update(status="IN_QUEUE", queue_position=position)
        elif phase is Phase.RUNNING:
            body.update(status="IN_PROGRESS", logs=self._logs(job, now) if with_logs else [])
        else:
            code = 200
            terminal_at = job.terminal_at()
            end = now if terminal_at is None else terminal_at
            body.update(
                status="COMPLETED",
                logs=self._logs(job, now) if with_logs else None,
                metrics={"inference_time": round(max(0.0, end - job.started_mono), 6)},
            )
            if phase is Phase.CANCELLED:
                body.update(error=self.conventions.cancelled_error, error_type=self.conventions.cancelled_error_type)
            elif job.fault is FaultKind.MODEL_ERROR:
                body.update(error=self.conventions.model_error_detail, error_type=self.conventions.model_error_type)
        return json_response(body, code, {"x-fal-request-id": job.id})

    async def result(self, request: Request) -> Response:
        """GET .../requests/{id}: the model's answer (v4Output, or its 422/500), 400 if not done yet."""
        job, early = await self._begin(request, "result")
        if job is None:
            return early or _request_not_found()
        conventions = self.conventions
        headers = {"x-fal-request-id": job.id}
        phase = job.phase(self.control.now())
        if phase in (Phase.QUEUED, Phase.RUNNING):
            return json_response({"detail": conventions.early_result_detail}, conventions.early_result_status, headers)
        if phase is Phase.CANCELLED:
            detail = {"detail": conventions.cancelled_error, "error_type": conventions.cancelled_error_type}
            return json_response(detail, conventions.cancelled_result_status, headers)
        if job.error is not None or job.output is None:
            return json_response({"detail": job.error}, 422, headers)
        if job.fault is FaultKind.VALIDATION:
            return json_response({"detail": list(conventions.validation_fault_error)}, 422, headers)
        if job.fault is FaultKind.MODEL_ERROR:
            detail = {"detail": conventions.model_error_detail, "error_type": conventions.model_error_type}
            return json_response(detail, 500, headers)
        return json_response(await self._output(request, job), 200, headers)

    async def cancel(self, request: Request) -> Response:
        """PUT .../requests/{id}/cancel: 202 CANCELLATION_REQUESTED, 400 ALREADY_COMPLETED, 404 NOT_FOUND."""
        job, early = await self._begin(request, "cancel")
        if job is None:
            return early or json_response({"status": "NOT_FOUND"}, self.conventions.not_found_status)
        headers = {"x-fal-request-id": job.id}
        now = self.control.now()
        if job.cancel(now):
            self.control.cancels += 1
        elif job.phase(now) is not Phase.CANCELLED:
            return json_response({"status": "ALREADY_COMPLETED"}, self.conventions.already_completed_status, headers)
        return json_response({"status": "CANCELLATION_REQUESTED"}, 202, headers)

    async def file(self, request: Request) -> Response:
        """GET /files/{id}/{index}.{ext}: a completed job's image, rendered on first request."""
        self.control.count("file")
        fault = self.control.faults.take("file")
        if fault is not None:
            return await self._fault_response(fault, request, binary=True)
        job = self.control.jobs.get(request.path_params["job_id"])
        stem, _, ext = request.path_params["name"].partition(".")
        if job is None or not stem.isdigit() or ext not in FILE_EXTENSIONS or not self._succeeded(job):
            return _not_found()
        assert job.output is not None  # _succeeded checked it
        index = int(stem)
        if index >= job.output.count:
            return _not_found()
        data = await self.control.renders.get((job.id, index, ext), self._render_spec(job, index, ext))
        return Response(data, media_type=CONTENT_TYPES[ext], headers={"cache-control": "max-age=3600"})

    # --- pieces ---------------------------------------------------------------------------------------

    async def _begin(self, request: Request, op: str) -> tuple[Job | None, Response | None]:
        """Count, authenticate, apply a fault and find the job; a Response means answer with it."""
        self.control.count(op)
        if (denied := self._deny(request)) is not None:
            return None, denied
        fault = self.control.faults.take(op)
        if fault is not None:
            return None, await self._fault_response(fault, request, request_id=request.path_params["request_id"])
        job = self.control.jobs.get(request.path_params["request_id"])
        prefix = f"{request.path_params['owner']}/{request.path_params['app']}/"
        if job is None or not job.model.startswith(prefix):
            return None, None
        return job, None

    def _deny(self, request: Request) -> Response | None:
        header = request.headers.get("authorization")
        if not header:
            return json_response({"detail": self.conventions.missing_key_detail}, 401)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "key" or not hmac.compare_digest(token.strip().encode(), self._key):
            return json_response({"detail": self.conventions.invalid_key_detail}, 401)
        return None

    async def _fault_response(
        self, fault: Fault, request: Request, *, request_id: str | None = None, binary: bool = False
    ) -> Response:
        if fault.kind is FaultKind.HTTP_500:
            # fal's own 500s carry x-fal-request-id, which tells fal_client not to retry them.
            headers = {"x-fal-request-id": request_id or str(uuid.uuid4())}
            return json_response({"detail": "Internal Server Error (simulated)"}, 500, headers)
        if fault.kind is FaultKind.HTTP_503:
            # An ingress error: nginx body and no request id, which fal_client does retry.
            return Response(NGINX_503, 503, media_type="text/html")
        if fault.kind is FaultKind.HTTP_429:
            headers = {"retry-after": str(math.ceil(fault.retry_after))}
            return json_response({"detail": "Too many requests (simulated)"}, 429, headers)
        if fault.kind is FaultKind.HANG:
            return await hang_response(self.control, request, self.conventions.hang_max_s)
        return malformed_response(binary)

    def _urls(self, request: Request, job: Job) -> dict[str, str]:
        base = self.public_url or str(request.base_url).rstrip("/")
        app_id = "/".join(job.model.split("/")[:2])
        response_url = f"{base}/{app_id}/requests/{job.id}"
        return {
            "response_url": response_url,
            "status_url": f"{response_url}/status",
            "cancel_url": f"{response_url}/cancel",
        }

    def _logs(self, job: Job, now: float) -> list[dict[str, str]]:
        output = job.output
        what = f"{output.count} image(s) at {output.width}x{output.height}" if output else "invalid input"
        logs = [_log(f"Generating {what}", job.wall(job.started_mono))]
        if job.phase(now) is Phase.DONE:
            logs.append(_log("Generation finished", job.wall(job.finished_mono)))
        return logs

    def _succeeded(self, job: Job) -> bool:
        failed = job.error is not None or job.fault in (FaultKind.VALIDATION, FaultKind.MODEL_ERROR)
        return job.output is not None and not failed and job.phase(self.control.now()) is Phase.DONE

    def _render_spec(self, job: Job, index: int, ext: str) -> RenderSpec:
        output = job.output
        assert output is not None
        return RenderSpec(
            width=output.width,
            height=output.height,
            format=ext,
            seed=output.seed + index,  # distinct pictures for num_images > 1
            prompt=output.prompt,
            inputs=tuple(image.data for image in job.images),
            quality=output.quality,
            black=job.fault is FaultKind.NSFW,
        )

    async def _output(self, request: Request, job: Job) -> dict[str, Any]:
        output = job.output
        assert output is not None
        base = self.public_url or str(request.base_url).rstrip("/")
        sync_mode = job.input.get("sync_mode") is True
        images = []
        for index in range(output.count):
            if sync_mode:  # "the media will be returned as a data URI"
                spec = self._render_spec(job, index, output.format)
                data = await self.control.renders.get((job.id, index, output.format), spec)
                url = f"data:{CONTENT_TYPES[output.format]};base64,{base64.b64encode(data).decode()}"
            else:
                url = f"{base}/files/{job.id}/{index}.{output.format}"
            images.append(
                {
                    "url": url,
                    "width": output.width,
                    "height": output.height,
                    "content_type": CONTENT_TYPES[output.format],
                }
            )
        return {
            "images": images,
            "seed": output.seed,
            "has_nsfw_concepts": [job.fault is FaultKind.NSFW] * output.count,
            "prompt": output.prompt,
            "timings": {"inference": job.run_s},
        }

    def _describe(self, job: Job, now: float) -> str:
        phase = job.phase(now)
        # CANCELLED is not a fal wire status (fal shows COMPLETED); stats name it so tests can see it.
        return {Phase.QUEUED: "IN_QUEUE", Phase.RUNNING: "IN_PROGRESS", Phase.DONE: "COMPLETED"}.get(phase, "CANCELLED")


def _log(message: str, epoch: float) -> dict[str, str]:
    return {"message": message, "level": "INFO", "source": "USER", "timestamp": isoformat_utc(epoch)}


def _not_found() -> Response:
    return json_response({"detail": "Not Found"}, 404)


def _request_not_found() -> Response:
    return json_response({"detail": "Request not found"}, 404)


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
    return json_response({"detail": detail}, status)
