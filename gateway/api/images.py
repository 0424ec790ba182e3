"""`POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart), OpenAI's shapes."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import Response

from gateway.api.idempotent import IDEMPOTENCY_HEADER, idempotent
from gateway.api.route_preview import route_preview
from gateway.catalog import ModelRef
from gateway.dispatch import Served, nothing_to_try
from gateway.exceptions import InvalidRequest, ModelNotFound, PermissionDenied
from gateway.metering.admission import rate_headers
from gateway.pricing import format_usd
from gateway.routing.candidates import eligible_candidates
from gateway.services import Caller, Services, authenticated
from gateway.types import ImageRequest, InputImage, Mode
from gateway.validation import ImageParams, build_request, decode_images, parse_params

log = logging.getLogger("gateway.access")
router = APIRouter()
IMAGE_FIELDS = ("image", "image[]")
TIMEOUT_HEADER = "x-gateway-timeout"


@router.post("/v1/images/generations")
async def create_image(request: Request, caller: Annotated[Caller, Depends(authenticated)]) -> Response:
    """Text to image."""
    body = await request.body()
    return await idempotent(caller, request, body, lambda: _generate(caller, request, body))


async def _generate(caller: Caller, request: Request, body: bytes) -> Response:
    svc = caller.svc
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "The request body is not valid JSON. Send a JSON object with Content-Type: application/json."
        ) from None
    if not isinstance(fields, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    params = parse_params(fields, max_prompt_chars=svc.settings.max_prompt_chars)
    return await _serve(caller, request, params, Mode.GENERATE)


@router.post("/v1/images/edits")
async def edit_image(request: Request, caller: Annotated[Caller, Depends(authenticated)]) -> Response:
    """Image(s) + prompt to image. Accepts `image`, `image[]` and repeated `image` file fields, in order."""
    if request.headers.get(IDEMPOTENCY_HEADER) is None:
        return await _edit(caller, request)
    body = await request.body()  # the whole request is what a retry must repeat
    return await idempotent(caller, request, body, lambda: _edit(caller, request))


async def _edit(caller: Caller, request: Request) -> Response:
    svc = caller.svc
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Send /v1/images/edits as multipart/form-data with the images in 'image' fields.")
    try:
        form = await request.form(max_files=16, max_fields=64)
    except (MultiPartException, HTTPException) as exc:
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise InvalidRequest(f"Malformed multipart body: {detail}") from None
    try:
        fields: dict[str, Any] = {}
        uploads: list[tuple[str, bytes]] = []
        has_mask = False
        for key, value in form.multi_items():
            if key in IMAGE_FIELDS:
                if not isinstance(value, UploadFile):
                    raise InvalidRequest("'image' must be a file upload, not a text field.", param="image")
                uploads.append(("image", await value.read()))
            elif key == "mask":
                has_mask = True
            elif isinstance(value, str):
                fields[key] = value
        params = parse_params(fields, max_prompt_chars=svc.settings.max_prompt_chars)
        _resolve(caller, params)  # an unknown model is a 404 before any image is decoded
        settings = svc.settings
        images = await decode_images(
            uploads,
            max_file_bytes=settings.max_upload_file_bytes,
            max_total_bytes=settings.max_upload_total_bytes,
            max_pixels=settings.max_input_pixels,
        )
    finally:
        await form.close()  # uploaded files may be spooled to disk
    return await _serve(caller, request, params, Mode.EDIT, images, has_mask)


def _resolve(caller: Caller, params: ImageParams) -> ModelRef:
    catalog = caller.svc.catalog
    ref = catalog.resolve(params.model)
    if ref is None:
        known = ", ".join(m.id for m in catalog.models)
        raise ModelNotFound(f"The model '{params.model}' does not exist. Available models: {known}.", param="model")
    if not caller.principal.may_use(ref.model.id):
        raise PermissionDenied(f"This API key may not use '{ref.model.id}'; ask an admin to allow it.", param="model")
    return ref


async def _serve(
    caller: Caller,
    request: Request,
    params: ImageParams,
    mode: Mode,
    images: tuple[InputImage, ...] = (),
    has_mask: bool = False,
) -> Response:
    svc = caller.svc
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + _timeout_s(request, svc)
    ref = _resolve(caller, params)
    image_request = build_request(
        params, ref.model, mode, request_id=request.scope["state"]["request_id"], images=images, has_mask=has_mask
    )
    candidates = eligible_candidates(ref, image_request)
    health = await svc.health.snapshot([c.deployment.key for c in candidates])
    plan = svc.router.plan(candidates, health, ref.model.routing, params.route, time.time())
    if request.query_params.get("dry_run", "").lower() in ("1", "true", "yes"):
        return _json(route_preview(ref.model.id, image_request, plan))
    if not plan.ranked:
        raise nothing_to_try(plan)
    # Reserve the dearest candidate's cost: failover may land there, and a budget must never be overspent.
    reserve = max(r.candidate.usage.cost_micros for r in plan.ranked)
    admitted, decision = await svc.admission.admit(caller.principal, image_request.request_id, reserve)
    settle = functools.partial(svc.settlement.settle, admitted)
    served = await svc.dispatcher.dispatch(image_request, plan, deadline, ref.model.routing.hedge, report=settle)
    async with asyncio.timeout_at(deadline):
        data = await _image_data(svc, served, image_request, params.response_format)

    usage = served.ranked.candidate.usage
    deployment = served.ranked.candidate.deployment
    body = {
        "created": int(time.time()),
        "data": data,
        "output_format": image_request.output_format.value,
        # An extension the openai SDKs ignore: who served the request and what it cost.
        "gateway": {
            "request_id": image_request.request_id,
            "provider": deployment.key,
            "route": plan.policy.value,
            "megapixels": round(float(usage.megapixels), 6),
            "output_megapixels": round(float(usage.output_megapixels), 6),
            "input_megapixels": round(float(usage.input_megapixels), 6),
            "cost_usd": format_usd(usage.cost_micros),
            "cost_micros": usage.cost_micros,
            "attempts": [
                {"provider": a.deployment_key, "outcome": a.outcome, "ms": round(a.elapsed_s * 1000, 1)}
                for a in served.attempts
            ],
        },
    }
    headers = {
        **rate_headers(decision),
        "x-gateway-provider": deployment.key,
        "x-gateway-attempts": ", ".join(f"{a.deployment_key}={a.outcome}" for a in served.attempts),
        "x-gateway-route": plan.policy.value,
        "x-gateway-cost-usd": format_usd(usage.cost_micros),
    }
    log.info(
        "%s %s team=%s key=%s model=%s provider=%s attempts=%d n=%d size=%dx%d cost_micros=%d ms=%.1f",
        image_request.request_id,
        mode.value,
        caller.principal.team,
        caller.principal.key_id,
        ref.model.id,
        deployment.key,
        len(served.attempts),
        image_request.n,
        image_request.width,
        image_request.height,
        usage.cost_micros,
        (time.perf_counter() - started) * 1000,
    )
    return _json(body, headers)


def _timeout_s(request: Request, svc: Services) -> float:
    """The request's deadline in seconds: the setting, or `x-gateway-timeout` capped by the maximum."""
    settings = svc.settings
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return settings.request_timeout_s
    try:
        wanted = float(raw)
    except ValueError:
        wanted = -1.0
    if not 0 < wanted < float("inf"):
        raise InvalidRequest(f"The {TIMEOUT_HEADER} header must be a positive number of seconds.", param=TIMEOUT_HEADER)
    return min(wanted, settings.max_request_timeout_s)


def _json(body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


async def _image_data(
    svc: Services, served: Served, request: ImageRequest, response_format: str
) -> list[dict[str, str]]:
    images = served.result.images
    if response_format == "url":
        return [{"url": image.url} for image in images]
    provider = served.ranked.candidate.deployment.provider
    encoded = await asyncio.gather(*(svc.fetcher.fetch_b64(image, request, provider) for image in images))
    return [{"b64_json": b64} for b64 in encoded]
