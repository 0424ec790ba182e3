"""Replicate's black-forest-labs/flux-2-klein-4b input schema and the pixel size each (ratio, tier) gives.

Errors use the shape of Replicate's 422 "Input validation failed" (JSON-schema errors from gojsonschema):
`{"type": "enum", "field": "input.output_format", "description": "..."}`. A missing required field is
reported on its parent (`"field": "input", "description": "prompt is required"`), as gojsonschema does.

Output size: w = round(sqrt(MP * 2^20 * a/b) / 16) * 16 and h = round(sqrt(MP * 2^20 * b/a) / 16) * 16
for aspect ratio a:b and tier MP (UNCONFIRMED; the same table is in config/models.yaml and a test keeps
the two in step). `match_input_image` uses the listed ratio nearest to the first input image's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from providers.simulators.inputs import DataImage, DataUriError, decode_data_uri
from providers.simulators.jobs import OutputSpec

MATCH_INPUT_IMAGE = "match_input_image"
_JSON_TYPES: Mapping[type, str] = MappingProxyType(
    {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
)


@dataclass(frozen=True, slots=True)
class KleinSchema:
    """The klein-4b input schema. Enum values are UNCONFIRMED (sizes.md §1), so they live here."""

    aspect_ratios: tuple[str, ...] = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "5:4", "4:5", "21:9", "9:21")
    megapixel_tiers: tuple[str, ...] = ("1", "2")  # strings, like the enum on Replicate
    output_formats: tuple[str, ...] = ("jpg", "png", "webp")  # jpg, not jpeg
    max_images: int = 5
    size_grid: int = 16  # UNCONFIRMED rounding grid of the output size
    default_aspect_ratio: str = "1:1"
    default_megapixels: str = "1"
    default_output_format: str = "jpg"
    default_quality: int = 95
    # UNCONFIRMED: what match_input_image does with no input image; we fall back to this ratio.
    match_input_fallback: str = "1:1"
    # Cog models reject fields their schema does not declare; Replicate reports them like this.
    reject_unknown_fields: bool = True
    known_fields: frozenset[str] = field(
        default=frozenset(
            {
                "prompt",
                "images",
                "aspect_ratio",
                "output_megapixels",
                "seed",
                "go_fast",
                "output_format",
                "output_quality",
                "disable_safety_checker",
            }
        )
    )


@dataclass(slots=True)
class PredictionInput:
    """The outcome of checking one prediction input: what to produce, or Replicate's invalid_fields."""

    output: OutputSpec | None
    images: tuple[DataImage, ...] = ()
    decoded: dict[str, DataImage] = field(default_factory=dict)
    invalid_fields: list[dict[str, str]] = field(default_factory=list)


def output_size(aspect_ratio: str, megapixels: str, grid: int = 16) -> tuple[int, int]:
    """The pixel size the simulator produces for a listed ratio "a:b" and a megapixel tier."""
    a, b = (int(part) for part in aspect_ratio.split(":"))
    pixels = float(megapixels) * 2**20
    # floor(x + 0.5), not round(): Python's round() sends exact halves to the even neighbour.
    width = math.floor(math.sqrt(pixels * a / b) / grid + 0.5) * grid
    height = math.floor(math.sqrt(pixels * b / a) / grid + 0.5) * grid
    return (width, height)


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str:
    """The listed ratio closest to width:height (compared on a log scale, so 2:1 and 1:2 are symmetric)."""

    def distance(ratio: str) -> float:
        a, b = (int(part) for part in ratio.split(":"))
        return abs(math.log((width / height) / (a / b)))

    return min(ratios, key=distance)


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


class _Checker:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.invalid: list[dict[str, str]] = []

    def fail(self, kind: str, name: str, description: str) -> None:
        self.invalid.append({"type": kind, "field": f"input.{name}" if name else "input", "description": description})

    def typed(self, name: str, expected: type | tuple[type, ...], label: str) -> bool:
        value = self.values[name]
        if isinstance(value, expected) and not (isinstance(value, bool) and bool not in _as_tuple(expected)):
            return True
        self.fail("invalid_type", name, f"Invalid type. Expected: {label}, given: {_json_type(value)}")
        return False

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str | None:
        if name not in self.values:
            return default
        if not self.typed(name, str, "string"):
            return None
        if self.values[name] not in allowed:
            listed = ", ".join(f'"{v}"' for v in allowed)
            self.fail("enum", name, f"{name} must be one of the following: {listed}")
            return None
        return str(self.values[name])


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def validate_prediction_input(values: Any, schema: KleinSchema) -> PredictionInput:
    """Check a prediction's `input` object against the klein-4b schema."""
    if not isinstance(values, dict):
        result = PredictionInput(None)
        result.invalid_fields.append(
            {"type": "invalid_type", "field": "input", "description": "Invalid type. Expected: object"}
        )
        return result
    check = _Checker(values)
    if schema.reject_unknown_fields:
        for name in sorted(set(values) - schema.known_fields):
            check.fail("additional_property_not_allowed", "", f"Additional property {name} is not allowed")
    prompt = values.get("prompt")
    if "prompt" not in values:
        check.fail("required", "", "prompt is required")
    elif not check.typed("prompt", str, "string"):
        prompt = None
    ratio = check.choice("aspect_ratio", schema.default_aspect_ratio, (*schema.aspect_ratios, MATCH_INPUT_IMAGE))
    tier = check.choice("output_megapixels", schema.default_megapixels, schema.megapixel_tiers)
    output_format = check.choice("output_format", schema.default_output_format, schema.output_formats)
    quality = schema.default_quality
    if "output_quality" in values and check.typed("output_quality", int, "integer"):
        quality = values["output_quality"]
        if quality < 0:
            check.fail("number_gte", "output_quality", "Must be greater than or equal to 0")
        elif quality > 100:
            check.fail("number_lte", "output_quality", "Must be less than or equal to 100")
    seed = values.get("seed")
    if seed is not None and not check.typed("seed", int, "integer"):
        seed = None
    for name in ("go_fast", "disable_safety_checker"):
        if name in values:
            check.typed(name, bool, "boolean")
    decoded: dict[str, DataImage] = {}
    images = _check_images(check, values.get("images", []), schema, decoded)

    if check.invalid or ratio is None or tier is None or output_format is None:
        return PredictionInput(None, images, decoded, check.invalid)
    if ratio == MATCH_INPUT_IMAGE:
        ratio = nearest_ratio(images[0].width, images[0].height, schema.aspect_ratios) if images else None
        ratio = ratio or schema.match_input_fallback
    width, height = output_size(ratio, tier, schema.size_grid)
    output = OutputSpec(
        width=width,
        height=height,
        count=1,  # Replicate's klein has no num_outputs: one image per prediction
        format=output_format,
        seed=seed if seed is not None else random.randrange(2**31),
        prompt=prompt or "",
        quality=quality,
    )
    return PredictionInput(output, images, decoded)


def _check_images(
    check: _Checker, images: Any, schema: KleinSchema, decoded: dict[str, DataImage]
) -> tuple[DataImage, ...]:
    if not isinstance(images, list):
        check.fail("invalid_type", "images", f"Invalid type. Expected: array, given: {_json_type(images)}")
        return ()
    if len(images) > schema.max_images:
        check.fail("array_max_items", "images", f"Array must have at most {schema.max_images} items")
        return ()
    ordered: list[DataImage] = []
    for index, uri in enumerate(images):
        if not isinstance(uri, str):
            check.fail("invalid_type", f"images.{index}", f"Invalid type. Expected: string, given: {_json_type(uri)}")
            continue
        try:
            image = decoded[uri] if uri in decoded else decode_data_uri(uri)
        except DataUriError as exc:
            check.fail("format", f"images.{index}", str(exc))
            continue
        decoded[uri] = image
        ordered.append(image)
    return tuple(ordered)
