"""fal's FLUX.2 [klein] 4B input schema (t2i and /edit), checked the way fal's FastAPI apps check it.

Errors use FastAPI's 422 shape, `{"loc": ["body", field, ...], "msg": ..., "type": ...}`, with
pydantic v2 type words. The simulator checks at submit but, like fal, reports them from the result GET.
Unknown fields are ignored, as pydantic models do by default.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from providers.simulators.inputs import DataImage, DataUriError, decode_data_uri
from providers.simulators.jobs import OutputSpec

# fal's named sizes [DOC docs.fal.ai model-arguments].
PRESET_SIZES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "square_hd": (1024, 1024),
        "square": (512, 512),
        "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024),
        "landscape_4_3": (1024, 768),
        "landscape_16_9": (1024, 576),
    }
)
OUTPUT_FORMATS = ("jpeg", "png", "webp")
DEFAULT_T2I_SIZE = "landscape_4_3"
# fal's generic ImageSize defaults a missing side to 512 [3P copies of fal OpenAPI].
DEFAULT_SIDE = 512


@dataclass(frozen=True, slots=True)
class KleinLimits:
    """Limits of the klein schema. All UNCONFIRMED for 4B (research §2.8, sizes.md §3): configurable."""

    min_side: int = 64
    max_side: int = 2048  # aggregators list 2048x2048 as klein's max
    # Whether fal snaps custom sizes to a grid is UNCONFIRMED; outputs are rounded to this multiple.
    multiple_of: int = 1
    max_num_images: int = 4
    max_input_images: int = 4
    steps: tuple[int, int] = (4, 8)  # the 9B range; 4B unconfirmed


@dataclass(slots=True)
class KleinInput:
    """The outcome of checking one input: what to produce, or why not."""

    output: OutputSpec | None
    images: tuple[DataImage, ...] = ()
    decoded: dict[str, DataImage] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)


def _quote_all(values: tuple[str, ...] | list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


class _Checker:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.errors: list[dict[str, Any]] = []

    def fail(self, loc: list[str | int], msg: str, kind: str) -> None:
        self.errors.append({"loc": ["body", *loc], "msg": msg, "type": kind})

    def integer(self, value: Any, loc: list[str | int], low: int | None = None, high: int | None = None) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(loc, "Input should be a valid integer", "int_type")
            return None
        if low is not None and value < low:
            self.fail(loc, f"Input should be greater than or equal to {low}", "greater_than_equal")
            return None
        if high is not None and value > high:
            self.fail(loc, f"Input should be less than or equal to {high}", "less_than_equal")
            return None
        return value

    def boolean(self, name: str) -> None:
        if name in self.body and not isinstance(self.body[name], bool):
            self.fail([name], "Input should be a valid boolean", "bool_type")


def validate_klein_input(body: dict[str, Any], *, edit: bool, limits: KleinLimits) -> KleinInput:
    """Check a klein t2i or edit input; the result has either an OutputSpec or FastAPI-style errors."""
    check = _Checker(body)
    prompt = body.get("prompt")
    if "prompt" not in body:
        check.fail(["prompt"], "Field required", "missing")
    elif not isinstance(prompt, str):
        check.fail(["prompt"], "Input should be a valid string", "string_type")
    elif not prompt.strip():
        check.fail(["prompt"], "String should have at least 1 character", "string_too_short")

    count = check.integer(body.get("num_images", 1), ["num_images"], 1, limits.max_num_images)
    seed = body.get("seed")
    if seed is not None:
        seed = check.integer(seed, ["seed"])
    if "num_inference_steps" in body:
        check.integer(body["num_inference_steps"], ["num_inference_steps"], *limits.steps)
    output_format = body.get("output_format", "png")
    if output_format not in OUTPUT_FORMATS:
        check.fail(["output_format"], f"Input should be {_quote_all(OUTPUT_FORMATS)}", "literal_error")
    for name in ("enable_safety_checker", "sync_mode"):
        check.boolean(name)

    decoded: dict[str, DataImage] = {}
    ordered: list[DataImage] = []
    if edit:
        _check_image_urls(check, body.get("image_urls"), "image_urls" in body, limits, decoded, ordered)
    images = tuple(ordered)
    size = _output_size(check, body.get("image_size"), edit, images, limits)

    if check.errors or size is None or count is None:
        return KleinInput(None, images, decoded, check.errors)
    output = OutputSpec(
        width=size[0],
        height=size[1],
        count=count,
        format=output_format,
        seed=seed if seed is not None else random.randrange(2**31),
        prompt=prompt if isinstance(prompt, str) else "",
    )
    return KleinInput(output, images, decoded)


def _check_image_urls(
    check: _Checker,
    urls: Any,
    present: bool,
    limits: KleinLimits,
    decoded: dict[str, DataImage],
    ordered: list[DataImage],
) -> None:
    if not present:
        check.fail(["image_urls"], "Field required", "missing")
        return
    if not isinstance(urls, list):
        check.fail(["image_urls"], "Input should be a valid list", "list_type")
        return
    if not urls:
        check.fail(["image_urls"], "List should have at least 1 item after validation, not 0", "too_short")
        return
    if len(urls) > limits.max_input_images:
        check.fail(
            ["image_urls"],
            f"List should have at most {limits.max_input_images} items after validation, not {len(urls)}",
            "too_long",
        )
        return
    for index, url in enumerate(urls):
        if not isinstance(url, str):
            check.fail(["image_urls", index], "Input should be a valid string", "string_type")
            continue
        try:
            image = decoded[url] if url in decoded else decode_data_uri(url)
        except DataUriError as exc:
            check.fail(["image_urls", index], f"Value error, {exc}", "value_error")
            continue
        decoded[url] = image
        ordered.append(image)


def _output_size(
    check: _Checker, raw: Any, edit: bool, images: tuple[DataImage, ...], limits: KleinLimits
) -> tuple[int, int] | None:
    if raw is None and edit:
        # "If not provided, uses the input image size" (edit only); we clamp it into the limits.
        if not images:
            return None
        return (_fit(images[0].width, limits), _fit(images[0].height, limits))
    raw = DEFAULT_T2I_SIZE if raw is None else raw
    if isinstance(raw, str):
        if raw in PRESET_SIZES:
            return PRESET_SIZES[raw]
        check.fail(["image_size"], f"Input should be {_quote_all(list(PRESET_SIZES))}", "literal_error")
        return None
    if not isinstance(raw, dict):
        check.fail(["image_size"], "Input should be a valid dictionary or instance of ImageSize", "model_type")
        return None
    sides = [
        check.integer(raw.get(name, DEFAULT_SIDE), ["image_size", name], limits.min_side, limits.max_side)
        for name in ("width", "height")
    ]
    if sides[0] is None or sides[1] is None:
        return None
    return (_fit(sides[0], limits), _fit(sides[1], limits))


def _fit(side: int, limits: KleinLimits) -> int:
    """Clamp into [min_side, max_side] and round to the grid, the output size we claim fal produces."""
    step = limits.multiple_of
    snapped = max(step, round(side / step) * step)
    return max(limits.min_side, min(limits.max_side, snapped))
