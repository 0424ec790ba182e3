"""A local Replicate predictions API (api.replicate.com) serving black-forest-labs/flux-2-klein-4b.

    POST /v1/models/{owner}/{name}/predictions   create; body {"input": {...}}; 201 + prediction
    POST /v1/predictions                         create by {"version": <id>, "input": {...}}
    GET  /v1/predictions/{id}                    the prediction
    POST /v1/predictions/{id}/cancel             the prediction, now canceled (terminal ones unchanged)
    GET  /files/{id}/0.{png|jpg|webp}            the image bytes (no auth, like replicate.delivery)
    /_sim/...                                    control routes, see providers.simulators.control

Auth is `Authorization: Bearer <token>` (or the older `Token <token>`). Status comes from the clock:
`starting` for queue_ms, `processing` for run_ms, then `succeeded` (or `failed` for the model_error and
nsfw faults). `Prefer: wait` / `Prefer: wait=N` holds create until the prediction is terminal or N
seconds (max 60) pass; if it is not terminal by then the answer says `starting`, never `processing`,
because replicate-python's run() only polls a `starting` prediction (research §3.2).
Input errors are a 422 problem+json from create, as on Replicate. `urls.stream` and `urls.web` are
filled in but not served.
"""

from __future__ import annotations

import base64
import hmac
import math
import os
import time
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
from providers.simulators.inputs import summarize_input
from providers.simulators.jobs import Job, Phase, isoformat_utc
from providers.simulators.render import CONTENT_TYPES, RenderSpec
from providers.simulators.replicate_schema import KleinSchema, validate_prediction_input

OPS = ("create", "get", "cancel", "file")
FILE_EXTENSIONS = ("png", "jpg", "webp")
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ReplicateConventions:
    """Replicate details the research could not confirm (provider-apis.md §3, §5.3), kept in one place."""

    # Model → the version id its predictions report (the version page the research read).
    models: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(
            {"black-forest-labs/flux-2-klein-4b": "8e9c42d77b10a2a41af823ac4500f7545be6ebc4e745830fc3f3de10de200542"}
        )
    )
    schema: KleinSchema = field(default_factory=KleinSchema)
    create_status: int = 201  # UNCONFIRMED (3P example shows 201)
    max_wait_s: int = 60  # "Prefer: wait" holds up to 60 s; wait=N is clamped to 1..60
    missing_token_detail: str = "You did not pass an authentication token"  # UNCONFIRMED 401 wording
    invalid_token_detail: str = "You did not pass a valid authentication token"
    nsfw_error: str = "NSFW content detected. Try running it again, or try a different prompt."  # UNCONFIRMED
    model_error: str = "Prediction failed: simulated model error"
    validation_fault_fields: tuple[dict[str, str], ...] = (
        {"type": "enum", "field": "input.aspect_ratio", "description": "Simulated validation failure"},
    )
    hang_max_s: float = 3600.0


def _problem(title: str, detail: str, status: int, **extra: Any) -> Response:
    body = {"title": title, "detail": detail, "status": status, **extra}
    return json_response(body, status, media_type=PROBLEM_JSON)


def _not_found() -> Response:
    return _problem("Not found", "The requested resource could not be found.", 404)


def _prediction_id() -> str:
    # Replicate ids look like "gm3qorzdhgbfurvjtvhg6dckhu": 26 lowercase base32 characters.
    return base64.b32encode(os.urandom(20)).decode()[:26].lower()


def _invalid_input(fields: list[dict[str, str]] | tuple[dict[str, str], ...]) -> Response:
    detail = "".join(f"- {f['field']}: {f['description']}\n" for f in fields)
    return _problem("Input validation failed", detail, 422, invalid_fields=list(fields))


class ReplicateSimulator:
    """The Replicate predictions simulator: holds its state and serves it as a Starlette app (`.app`)."""

    def __init__(
        self,
        *,
        key: str,
        queue_ms: int = 50,
        run_ms: int = 200,
        faults: tuple[Fault, ...] = (),
        public_url: str | None = None,
        conventions: ReplicateConventions | None = None,
    ) -> None:
        self._key = key.encode()
        self.public_url = public_url.rstrip("/") if public_url else None
        self.conventions = conventions or ReplicateConventions()
        self.control = SimulatorControl(ops=OPS, submit_op="create", latency=Latency(queue_ms, run_ms), faults=faults)
        routes = [
            *self.control.routes(self._describe),
            Route("/files/{job_id}/{name}", self.file, methods=["GET"]),
            Route("/v1/models/{owner}/{name}/predictions", self.create, methods=["POST"]),
            Route("/v1/predictions", self.create, methods=["POST"]),
            Route("/v1/predictions/{prediction_id}", self.get, methods=["GET"]),
            Route("/v1/predictions/{prediction_id}/cancel", self.cancel, methods=["POST"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})

    # --- handlers -------------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        """POST .../predictions: validate, start a prediction, and honour `Prefer: wait`."""
        self.control.count("create")
        if (denied := self._deny(request)) is not None:
            return denied
        path_model = "{owner}/{name}".format(**request.path_params) if request.path_params else None
        if path_model is not None and path_model not in self.conventions.models:
            return _not_found()
        fault = self.control.faults.take("create")
        if fault is not None and not fault.kind.job_level:
            return await self._fault_response(fault, request)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _problem("Bad request", "The request body is not valid JSON.", 400)
        if not isinstance(body, dict) or "input" not in body:
            return _invalid_input([{"type": "required", "field": "(root)", "description": "input is required"}])
        model = path_model or self._model_for_version(body.get("version"))
        if model is None:
            detail = "The specified version does not exist (or perhaps you don't have permission to use it?)"
            return _problem("Invalid version or not permitted", detail, 422)
        if fault is not None and fault.kind is FaultKind.VALIDATION:
            return _invalid_input(self.conventions.validation_fault_fields)
        checked = validate_prediction_input(body["input"], self.conventions.schema)
        if checked.invalid_fields:
            return _invalid_input(checked.invalid_fields)

        latency = self.control.latency
        job = Job(
            id=_prediction_id(),
            model=model,
            input=body["input"],
            input_summary=summarize_input(body["input"], checked.decoded),
            created_wall=time.time(),
            created_mono=self.control.now(),
            queue_s=latency.queue_ms / 1000,
            run_s=latency.run_ms / 1000,
            output=checked.output,
            images=checked.images,
            fault=fault.kind if fault is not None else None,
        )
        self.control.jobs.add(job)
        if (wait_s := self._prefer_wait(request.headers.get("prefer"))) is not None:
            await self._hold_until_terminal(job, wait_s)
        prediction = self._prediction(request, job, hide_progress=True)
        return json_response(prediction, self.conventions.create_status, {"location": prediction["urls"]["get"]})

    async def get(self, request: Request) -> Response:
        """GET /v1/predictions/{id}: the prediction as of now."""
        job, early = await self._begin(request, "get")
        if job is None:
            return early or _not_found()
        return json_response(self._prediction(request, job))

    async def cancel(self, request: Request) -> Response:
        """POST /v1/predictions/{id}/cancel: the prediction, canceled unless it had already finished."""
        job, early = await self._begin(request, "cancel")
        if job is None:
            return early or _not_found()
        # UNCONFIRMED: cancelling a terminal prediction; we answer 200 with it unchanged.
        if job.cancel(self.control.now()):
            self.control.cancels += 1
        return json_response(self._prediction(request, job))

    async def file(self, request: Request) -> Response:
        """GET /files/{id}/0.{ext}: a succeeded prediction's image, rendered on first request."""
        self.control.count("file")
        fault = self.control.faults.take("file")
        if fault is not None:
            return await self._fault_response(fault, request, binary=True)
        job = self.control.jobs.get(request.path_params["job_id"])
        stem, _, ext = request.path_params["name"].partition(".")
        if job is None or stem != "0" or ext not in FILE_EXTENSIONS or self._status(job)[0] != "succeeded":
            return _not_found()
        output = job.output
        assert output is not None  # succeeded jobs always have one
        spec = RenderSpec(
            width=output.width,
            height=output.height,
            format=ext,
            seed=output.seed,
            prompt=output.prompt,
            inputs=tuple(image.data for image in job.images),
            quality=output.quality,
        )
        data = await self.control.renders.get((job.id, ext), spec)
        return Response(data, media_type=CONTENT_TYPES[ext], headers={"cache-control": "max-age=3600"})

    # --- pieces ---------------------------------------------------------------------------------------

    async def _begin(self, request: Request, op: str) -> tuple[Job | None, Response | None]:
        """Count, authenticate, apply a fault and find the job; a Response means answer with it."""
        self.control.count(op)
        if (denied := self._deny(request)) is not None:
            return None, denied
        fault = self.control.faults.take(op)
        if fault is not None:
            return None, await self._fault_response(fault, request)
        return self.control.jobs.get(request.path_params["prediction_id"]), None

    def _deny(self, request: Request) -> Response | None:
        header = request.headers.get("authorization")
        if not header:
            return _problem("Unauthenticated", self.conventions.missing_token_detail, 401)
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(token.strip().encode(), self._key):
            return _problem("Unauthenticated", self.conventions.invalid_token_detail, 401)
        return None

    async def _fault_response(self, fault: Fault, request: Request, *, binary: bool = False) -> Response:
        if fault.kind is FaultKind.HTTP_500:
            return _problem("Internal Server Error", "Simulated internal server error.", 500)
        if fault.kind is FaultKind.HTTP_503:
            return _problem("Service Unavailable", "Simulated service unavailable.", 503)
        if fault.kind is FaultKind.HTTP_429:
            seconds = math.ceil(fault.retry_after)
            detail = f"Request was throttled. Expected available in {seconds} second{'' if seconds == 1 else 's'}."
            return json_response({"detail": detail}, 429, {"retry-after": str(seconds)})
        if fault.kind is FaultKind.HANG:
            return await hang_response(self.control, request, self.conventions.hang_max_s)
        return malformed_response(binary)

    def _model_for_version(self, version: Any) -> str | None:
        if not isinstance(version, str):
            return None
        version_id = version.rpartition(":")[2]  # accept "owner/name:version" as well as the bare id
        return next((m for m, v in self.conventions.models.items() if v == version_id), None)

    def _prefer_wait(self, prefer: str | None) -> float | None:
        """Seconds to hold a create for, from `Prefer: wait` / `Prefer: wait=N`; None without it."""
        for token in (prefer or "").replace(";", ",").split(","):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() != "wait":
                continue
            if not value:
                return float(self.conventions.max_wait_s)
            if value.strip().isdigit() and int(value) > 0:
                return float(min(int(value), self.conventions.max_wait_s))
        return None

    async def _hold_until_terminal(self, job: Job, wait_s: float) -> None:
        terminal_at = job.terminal_at()
        if terminal_at is not None:
            # A hair past the finish line, so the clock agrees the job is done when we wake.
            wait_s = min(wait_s, max(0.0, terminal_at - self.control.now()) + 0.002)
        if wait_s > 0:
            await self.control.hold(wait_s, wake=job.wakeup())

    def _status(self, job: Job) -> tuple[str, str | None]:
        """The prediction's status word and error string."""
        phase = job.phase(self.control.now())
        if phase is Phase.QUEUED:
            return "starting", None
        if phase is Phase.RUNNING:
            return "processing", None
        if phase is Phase.CANCELLED:
            return "canceled", None
        if job.fault is FaultKind.MODEL_ERROR:
            return "failed", self.conventions.model_error
        if job.fault is FaultKind.NSFW:
            return "failed", self.conventions.nsfw_error
        return "succeeded", None

    def _prediction(self, request: Request, job: Job, *, hide_progress: bool = False) -> dict[str, Any]:
        base = self.public_url or str(request.base_url).rstrip("/")
        output = job.output
        assert output is not None  # invalid inputs never become jobs on Replicate
        status, error = self._status(job)
        if hide_progress and status not in TERMINAL:
            status = "starting"
        # Whether it ever left the queue: not if shown as starting, stuck, or cancelled before its start.
        cancelled_early = job.cancelled_mono is not None and job.cancelled_mono < job.started_mono
        ran = status != "starting" and not job.stuck and not cancelled_early
        end = job.terminal_at() if status in TERMINAL else None
        logs = ""
        if ran:
            logs = f"Using seed: {output.seed}\nGenerating 1 image at {output.width}x{output.height}\n"
            logs += "Done\n" if status == "succeeded" else ""
        url = f"{base}/v1/predictions/{job.id}"
        metrics: dict[str, float] = {}
        if end is not None:
            metrics = {
                "predict_time": round(max(0.0, end - job.started_mono) if ran else 0.0, 6),
                "total_time": round(end - job.created_mono, 6),
            }
        return {
            "id": job.id,
            "model": job.model,
            "version": self.conventions.models.get(job.model, ""),
            "input": job.input,
            "logs": logs,
            "output": [f"{base}/files/{job.id}/0.{output.format}"] if status == "succeeded" else None,
            "error": error,
            "status": status,
            "created_at": isoformat_utc(job.created_wall),
            "started_at": isoformat_utc(job.wall(job.started_mono)) if ran else None,
            "completed_at": isoformat_utc(job.wall(end)) if end is not None else None,
            "data_removed": False,
            "metrics": metrics,
            "urls": {
                "get": url,
                "cancel": f"{url}/cancel",
                "stream": f"{url}/stream",
                "web": f"{base}/p/{job.id}",
            },
        }

    def _describe(self, job: Job, now: float) -> str:
        return self._status(job)[0]


async def _http_exception(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code != 404:
        return _problem(str(exc.detail), str(exc.detail), exc.status_code)
    return _not_found()
