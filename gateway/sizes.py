"""Which output sizes a deployment can produce exactly, and the nearest ones when it cannot.

Providers differ: fal takes any width x height within limits (`FreeSizes`), while Replicate's klein model
takes only an aspect ratio and a megapixel tier, so it can produce a fixed table of sizes (`TableSizes`).
The gateway never returns a size other than the one asked for, so dispatch only considers deployments
whose capability `supports()` the request exactly, and a 400 names `nearest()` sizes otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

Size = tuple[int, int]


def size_distance(want: Size, have: Size) -> float:
    """How different two sizes look: aspect-ratio difference weighs more than area difference."""
    (w1, h1), (w2, h2) = want, have
    aspect = abs(math.log((w1 / h1) / (w2 / h2)))
    area = abs(math.log((w1 * h1) / (w2 * h2)))
    return 2.0 * aspect + area


def format_size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass(frozen=True, slots=True)
class FreeSizes:
    """Any width x height with each side in [min_side, max_side] and a multiple of `multiple_of`."""

    min_side: int
    max_side: int
    multiple_of: int = 1
    max_pixels: int | None = None

    def supports(self, width: int, height: int) -> bool:
        return (
            self.min_side <= width <= self.max_side
            and self.min_side <= height <= self.max_side
            and width % self.multiple_of == 0
            and height % self.multiple_of == 0
            and (self.max_pixels is None or width * height <= self.max_pixels)
        )

    def nearest(self, width: int, height: int) -> Size:
        w, h = float(width), float(height)
        if self.max_pixels is not None and w * h > self.max_pixels:
            scale = math.sqrt(self.max_pixels / (w * h))
            w, h = w * scale, h * scale
        # Snap down when scaling for a pixel cap, so the result stays within it.
        capped = self.max_pixels is not None and width * height > self.max_pixels
        snap = math.floor if capped else _round_half_up
        w = _snap(w, self.multiple_of, self.min_side, self.max_side, snap)
        h = _snap(h, self.multiple_of, self.min_side, self.max_side, snap)
        return (w, h)

    def params_for(self, width: int, height: int) -> Mapping[str, Any]:
        """Free sizes need no provider-specific parameters beyond width and height."""
        return {}

    def nominal_megapixels(self, width: int, height: int) -> Fraction | None:
        return None


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _snap(value: float, multiple: int, low: int, high: int, rounder: Any) -> int:
    snapped = int(rounder(value / multiple)) * multiple
    lowest = -(-low // multiple) * multiple
    highest = (high // multiple) * multiple
    return max(lowest, min(highest, snapped))


@dataclass(frozen=True, slots=True)
class SizeOption:
    """One exact size a table-sized deployment produces, and the provider input that produces it."""

    width: int
    height: int
    # The provider's own nominal megapixel tier for this option (e.g. Replicate `output_megapixels`).
    megapixels: Fraction
    # Provider input fields that make the provider produce exactly this size.
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> Size:
        return (self.width, self.height)


@dataclass(frozen=True, slots=True)
class TableSizes:
    """A fixed set of sizes, each reached by its own provider parameters."""

    options: tuple[SizeOption, ...]
    _index: dict[Size, SizeOption] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {option.size: option for option in self.options})

    def supports(self, width: int, height: int) -> bool:
        return (width, height) in self._index

    def nearest(self, width: int, height: int) -> Size:
        return min((o.size for o in self.options), key=lambda s: size_distance((width, height), s))

    def params_for(self, width: int, height: int) -> Mapping[str, Any]:
        return self._index[(width, height)].params

    def nominal_megapixels(self, width: int, height: int) -> Fraction | None:
        return self._index[(width, height)].megapixels


SizeCapability = FreeSizes | TableSizes


def nearest_sizes(capabilities: Iterable[SizeCapability], width: int, height: int, limit: int = 3) -> list[Size]:
    """The closest sizes any of `capabilities` can produce, best first, without duplicates."""
    found = {cap.nearest(width, height) for cap in capabilities}
    return sorted(found, key=lambda s: (size_distance((width, height), s), s))[:limit]
