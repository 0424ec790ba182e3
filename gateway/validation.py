"""Turn a client's raw fields (JSON body or multipart form) into a checked `ImageRequest`.

Everything here runs before any provider is called: a request rejected here costs nothing and is never
recorded. Messages say what to change, and each error names the offending `param`.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from PIL import Image, UnidentifiedImageError

from gateway.catalog import Model
from gateway.exceptions import InvalidRequest, PayloadTooLarge
from gateway.pricing import parse_usd_micros
from gateway.routing.config import Policy
from gateway.routing.policy import RoutePreferences
from gateway.sizes import format_size
from gateway.types import ImageFormat, ImageRequest, InputImage, Mode

RESPONSE_FORMATS = ("url", "b64_json")
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
_MAX_SEED = 2**32 - 1
# Pillow format names we accept for uploads, mapped to the gateway's names.
_UPLOAD_FORMATS = {"PNG": ImageFormat.PNG, "JPEG": ImageFormat.JPEG, "WEBP": ImageFormat.WEBP}


@dataclass(frozen=True, slots=True)
class ImageParams:
    """The non-file fields of an image request, type-checked but not yet checked against a model."""

    model: str
    prompt: str
    n: int
    size: tuple[int, int] | None
    response_format: str
    output_format: ImageFormat
    seed: int | None
    user: str | None
    route: RoutePreferences = field(default_factory=RoutePreferences)


# OpenRouter's `sort` names, and ours.
_SORTS = {"price": Policy.COST, "cost": Policy.COST, "latency": Policy.LATENCY, "balanced": Policy.BALANCED}


def parse_preferences(value: Any) -> RoutePreferences:
    """The request's `provider` object: order, allow_fallbacks, sort, max_price (USD for the whole request)."""
    if value is None:
        return RoutePreferences()
    if isinstance(value, str):  # multipart forms carry it as JSON text
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise InvalidRequest("'provider' must be a JSON object.", param="provider") from None
    if not isinstance(value, dict):
        raise InvalidRequest("'provider' must be an object.", param="provider")
    order = value.get("order", [])
    if not isinstance(order, list) or not all(isinstance(name, str) and name for name in order):
        raise InvalidRequest(
            "'provider.order' must be a list of provider names or deployment keys.", param="provider.order"
        )
    allow_fallbacks = value.get("allow_fallbacks", True)
    if not isinstance(allow_fallbacks, bool):
        raise InvalidRequest("'provider.allow_fallbacks' must be true or false.", param="provider.allow_fallbacks")
    sort = value.get("sort")
    if sort is not None and sort not in _SORTS:
        raise InvalidRequest(
            f"'provider.sort' must be one of {', '.join(sorted(_SORTS))}, got {sort!r}.", param="provider.sort"
        )
    return RoutePreferences(
        order=tuple(order),
        allow_fallbacks=allow_fallbacks,
        policy=_SORTS[sort] if sort is not None else None,
        max_price_micros=_parse_max_price(value.get("max_price")),
    )


def _parse_max_price(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, dict):  # OpenRouter nests prices by unit; a request price is what applies here
        value = value.get("request")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest("'provider.max_price' must be a USD amount, e.g. 0.01.", param="provider.max_price")
    try:
        micros = parse_usd_micros(str(value))
    except (ValueError, ZeroDivisionError):
        raise InvalidRequest(
            "'provider.max_price' must be a USD amount with at most 6 decimals, e.g. 0.01.", param="provider.max_price"
        ) from None
    if micros < 0:
        raise InvalidRequest("'provider.max_price' must not be negative.", param="provider.max_price")
    return micros


def parse_params(fields: Mapping[str, Any], *, max_prompt_chars: int) -> ImageParams:
    """Check field types and shapes; form fields arrive as strings, JSON fields as JSON types."""
    model = _required_str(fields, "model")
    prompt = _required_str(fields, "prompt")
    if not prompt.strip():
        raise InvalidRequest("'prompt' must not be empty.", param="prompt")
    if len(prompt) > max_prompt_chars:
        raise InvalidRequest(f"'prompt' is too long: at most {max_prompt_chars} characters.", param="prompt")
    if _truthy(fields.get("stream")):
        raise InvalidRequest("Streaming is not supported; omit 'stream' or set it to false.", param="stream")

    response_format = _optional_str(fields, "response_format") or "url"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequest(
            f"'response_format' must be 'url' or 'b64_json', got {response_format!r}.", param="response_format"
        )
    output_format = _parse_output_format(_optional_str(fields, "output_format"))
    return ImageParams(
        model=model,
        prompt=prompt,
        n=_optional_int(fields, "n", default=1, low=1, high=None) or 1,
        size=_parse_size(_optional_str(fields, "size")),
        response_format=response_format,
        output_format=output_format,
        seed=_optional_int(fields, "seed", default=None, low=0, high=_MAX_SEED),
        user=_optional_str(fields, "user"),
        route=parse_preferences(fields.get("provider")),
    )


def build_request(
    params: ImageParams,
    model: Model,
    mode: Mode,
    *,
    request_id: str,
    images: Sequence[InputImage] = (),
    has_mask: bool = False,
) -> ImageRequest:
    """Check `params` against the model's limits and build the provider-independent request."""
    limits = model.limits
    if mode not in model.modes:
        raise InvalidRequest(f"Model '{model.id}' does not support {mode.value}.", param="model")
    if params.n > limits.max_n:
        raise InvalidRequest(f"'n' must be between 1 and {limits.max_n} for '{model.id}'.", param="n")
    width, height = params.size or model.default_size
    for side in (width, height):
        if not limits.min_side <= side <= limits.max_side:
            raise InvalidRequest(
                f"Size {format_size((width, height))} is out of range for '{model.id}': each side must be "
                f"{limits.min_side}-{limits.max_side} px.",
                param="size",
            )
    if mode is Mode.EDIT:
        if has_mask and not limits.supports_mask:
            raise InvalidRequest(
                f"Model '{model.id}' does not support 'mask'; describe the change in the prompt instead.",
                param="mask",
            )
        if not images:
            raise InvalidRequest("Send at least one input image in 'image'.", param="image")
        if len(images) > limits.max_input_images:
            raise InvalidRequest(
                f"Too many input images: '{model.id}' takes at most {limits.max_input_images}, got {len(images)}.",
                param="image",
            )
    return ImageRequest(
        request_id=request_id,
        mode=mode,
        prompt=params.prompt,
        width=width,
        height=height,
        n=params.n,
        output_format=params.output_format,
        seed=params.seed,
        images=tuple(images),
        user=params.user,
    )


async def decode_images(
    uploads: Sequence[tuple[str, bytes]], *, max_file_bytes: int, max_total_bytes: int, max_pixels: int
) -> tuple[InputImage, ...]:
    """Decode-check uploaded (param, bytes) pairs off the event loop; refuse anything not a real image."""
    total = 0
    for param, data in uploads:
        if len(data) > max_file_bytes:
            raise PayloadTooLarge(
                f"Image is {len(data)} bytes; each image may be at most {max_file_bytes} bytes.", param=param
            )
        total += len(data)
    if total > max_total_bytes:
        raise PayloadTooLarge(
            f"Images total {total} bytes; all images together may be at most {max_total_bytes} bytes.",
            param="image",
        )
    if not uploads:
        return ()
    return tuple(await asyncio.to_thread(_decode_all, uploads, max_pixels))


def _decode_all(uploads: Sequence[tuple[str, bytes]], max_pixels: int) -> list[InputImage]:
    return [_decode_one(param, data, max_pixels) for param, data in uploads]


def _decode_one(param: str, data: bytes, max_pixels: int) -> InputImage:
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = _UPLOAD_FORMATS.get(image.format or "")
            if fmt is None:
                raise InvalidRequest(
                    f"Unsupported image format {image.format or 'unknown'}; send PNG, JPEG or WEBP.", param=param
                )
            width, height = image.size
            # Check the header's claimed size before decoding, so a decompression bomb is never expanded.
            if width * height > max_pixels:
                raise InvalidRequest(
                    f"Image is {width}x{height} ({width * height} pixels); at most {max_pixels} pixels allowed.",
                    param=param,
                )
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest(
            "Could not decode the uploaded file as an image; send a valid PNG, JPEG or WEBP.", param=param
        ) from None
    return InputImage(data=data, format=fmt, width=width, height=height)


def _required_str(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise InvalidRequest(f"Missing required parameter '{name}'.", param=name)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string.", param=name)
    return value


def _optional_str(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string.", param=name)
    return value


def _optional_int(
    fields: Mapping[str, Any], name: str, *, default: int | None, low: int, high: int | None
) -> int | None:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer.", param=name)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidRequest(f"'{name}' must be {bound}, got {value}.", param=name)
    return value


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.match(text)
    if not match:
        raise InvalidRequest(f"'size' must look like '1024x1024' (width x height), got {text!r}.", param="size")
    return int(match[1]), int(match[2])


def _parse_output_format(text: str | None) -> ImageFormat:
    if text is None:
        return ImageFormat.PNG
    normalized = "jpeg" if text.lower() == "jpg" else text.lower()
    try:
        return ImageFormat(normalized)
    except ValueError:
        raise InvalidRequest(
            f"'output_format' must be one of png, jpeg, webp, got {text!r}.", param="output_format"
        ) from None
