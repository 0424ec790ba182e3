"""`POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart), OpenAI's shapes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import Response

from gateway.catalog import ModelRef
from gateway.dispatch import Served
from gateway.exceptions import InvalidRequest, ModelNotFound
from gateway.pricing import format_usd
from gateway.routing.candidates import eligible_candidates
from gateway.services import Services, authenticated
from gateway.types import ImageRequest, InputImage, Mode
from gateway.validation import ImageParams, build_request, decode_images, parse_params

log = logging.getLogger("gateway.access")
router = APIRouter()
IMAGE_FIELDS = ("image", "image[]")


@router.post("/v1/images/generations")
async def create_image(request: Request, svc: Annotated[Services, Depends(authenticated)]) -> Response:
    """Text to image."""
    try:
        fields = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "The request body is not valid JSON. Send a JSON object with Content-Type: application/json."
        ) from None
    if not isinstance(fields, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    params = parse_params(fields, max_prompt_chars=svc.settings.max_prompt_chars)
    return await _serve(svc, request, params, Mode.GENERATE)


@router.post("/v1/images/edits")
async def edit_image(request: Request, svc: Annotated[Services, Depends(authenticated)]) -> Response:
    """Image(s) + prompt to image. Accepts `image`, `image[]` and repeated `image` file fields, in order."""
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
        _resolve(svc, params)  # an unknown model is a 404 before any image is decoded
        settings = svc.settings
        images = await decode_images(
            uploads,
            max_file_bytes=settings.max_upload_file_bytes,
            max_total_bytes=settings.max_upload_total_bytes,
            max_pixels=settings.max_input_pixels,
        )
    finally:
        await form.close()  # uploaded files may be spooled to disk
    return await _serve(svc, request, params, Mode.EDIT, images, has_mask)


def _resolve(svc: Services, params: ImageParams) -> ModelRef:
    ref = svc.catalog.resolve(params.model)
    if ref is None:
        known = ", ".join(m.id for m in svc.catalog.models)
        raise ModelNotFound(f"The model '{params.model}' does not exist. Available models: {known}.", param="model")
    return ref


async def _serve(
    svc: Services,
    request: Request,
    params: ImageParams,
    mode: Mode,
    images: tuple[InputImage, ...] = (),
    has_mask: bool = False,
) -> Response:
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + svc.settings.request_timeout_s
    ref = _resolve(svc, params)
    image_request = build_request(
        params, ref.model, mode, request_id=request.scope["state"]["request_id"], images=images, has_mask=has_mask
    )
    candidates = svc.router.order(eligible_candidates(ref, image_request))
    served = await svc.dispatcher.dispatch(image_request, candidates, deadline)
    async with asyncio.timeout_at(deadline):
        data = await _image_data(svc, served, image_request, params.response_format)

    usage = served.candidate.usage
    deployment = served.candidate.deployment
    body = {
        "created": int(time.time()),
        "data": data,
        "output_format": image_request.output_format.value,
        # An extension the openai SDKs ignore: who served the request and what it cost.
        "gateway": {
            "request_id": image_request.request_id,
            "provider": deployment.key,
            "megapixels": round(float(usage.megapixels), 6),
            "output_megapixels": round(float(usage.output_megapixels), 6),
            "input_megapixels": round(float(usage.input_megapixels), 6),
            "cost_usd": format_usd(usage.cost_micros),
            "cost_micros": usage.cost_micros,
            "attempts": len(served.attempts),
        },
    }
    headers = {
        "x-gateway-provider": deployment.key,
        "x-gateway-attempts": str(len(served.attempts)),
        "x-gateway-route": svc.router.name,
        "x-gateway-cost-usd": format_usd(usage.cost_micros),
    }
    log.info(
        "%s %s model=%s provider=%s n=%d size=%dx%d cost_micros=%d ms=%.1f",
        image_request.request_id,
        mode.value,
        ref.model.id,
        deployment.key,
        image_request.n,
        image_request.width,
        image_request.height,
        usage.cost_micros,
        (time.perf_counter() - started) * 1000,
    )
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


async def _image_data(
    svc: Services, served: Served, request: ImageRequest, response_format: str
) -> list[dict[str, str]]:
    images = served.result.images
    if response_format == "url":
        return [{"url": image.url} for image in images]
    provider = served.candidate.deployment.provider
    encoded = await asyncio.gather(*(svc.fetcher.fetch_b64(image, request, provider) for image in images))
    return [{"b64_json": b64} for b64 in encoded]
