"""Reference images that arrive inside provider inputs as `data:` URIs, and their summaries for /_sim/stats.

Both simulators accept input images only as base64 `data:` URIs (they have no internet to fetch URLs).
Decoding reads just the image header (Pillow opens lazily), so validating a submit stays cheap; the pixels
are decoded later, off the event loop, when an edit result is rendered.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

# Formats the providers document for input images (Replicate: "jpeg, png, gif, or webp").
ACCEPTED_INPUT_FORMATS = frozenset({"png", "jpeg", "webp", "gif"})


class DataUriError(ValueError):
    """A `data:` URI that is not a base64-encoded image in an accepted format."""


@dataclass(frozen=True, slots=True)
class DataImage:
    """One decoded reference image: its bytes plus what its header says."""

    data: bytes
    format: str
    width: int
    height: int

    def summary(self) -> dict[str, Any]:
        """What /_sim/stats shows in place of the data URI."""
        return {"format": self.format, "width": self.width, "height": self.height, "bytes": len(self.data)}


def is_data_uri(value: object) -> bool:
    return isinstance(value, str) and value[:5].lower() == "data:"


def decode_data_uri(uri: str) -> DataImage:
    """Decode a base64 image `data:` URI; raise DataUriError saying what is wrong with it."""
    if not is_data_uri(uri):
        raise DataUriError("only data: URIs are supported by the simulator")
    header, comma, payload = uri.partition(",")
    if not comma:
        raise DataUriError("data URI has no ',' separating the header from the data")
    if not header.lower().endswith(";base64"):
        raise DataUriError("data URI must be base64-encoded (data:<type>;base64,...)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataUriError(f"data URI is not valid base64: {exc}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = (image.format or "").lower()
            width, height = image.size
            image.verify()  # checks structure (PNG chunk CRCs etc.) without decoding the pixels
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataUriError(f"data URI does not contain a readable image: {exc}") from None
    if fmt not in ACCEPTED_INPUT_FORMATS:
        raise DataUriError(f"image format {fmt or 'unknown'!r} is not one of jpeg, png, gif, webp")
    return DataImage(data=data, format=fmt, width=width, height=height)


def summarize_input(value: Any, decoded: Mapping[str, DataImage] | None = None) -> Any:
    """A copy of a provider input with each data: URI replaced by {"format","width","height","bytes"}."""
    if isinstance(value, dict):
        return {key: summarize_input(item, decoded) for key, item in value.items()}
    if isinstance(value, list):
        return [summarize_input(item, decoded) for item in value]
    if is_data_uri(value):
        known = decoded.get(value) if decoded else None
        if known is not None:
            return known.summary()
        try:
            return decode_data_uri(value).summary()
        except DataUriError:
            return {"format": None, "width": None, "height": None, "bytes": len(value)}
    return value
