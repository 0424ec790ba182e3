"""The cost of one request at one deployment, in integer micro-USD, computed exactly (no floats).

Providers' megapixel rules are partly unconfirmed (divisor 10^6 or 2^20, rounding up or exact, whether
reference images are billed), so every one of those choices is a field of `PricingRule`, set per
deployment in the catalog. Arithmetic uses `Fraction`, and the total is rounded up once to a whole
micro-dollar so the gateway never under-counts spend.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from fractions import Fraction

from gateway.types import ImageRequest

MICROS_PER_USD = 1_000_000


class Rounding(enum.StrEnum):
    """How a provider turns an image's pixels into billable megapixels."""

    CEIL = "ceil"  # whole megapixels, rounded up per image
    EXACT = "exact"  # fractional megapixels


class OutputBasis(enum.StrEnum):
    """What an output image is billed by."""

    PIXELS = "pixels"  # the pixels produced
    NOMINAL = "nominal"  # the provider's megapixel tier setting for that size (Replicate's output_megapixels)


class InputBilling(enum.StrEnum):
    """How often reference images are billed."""

    PER_REQUEST = "per_request"  # once per provider request, however many images it returns (fal)
    PER_OUTPUT_IMAGE = "per_output_image"  # once per output image (one Replicate prediction per image)


@dataclass(frozen=True, slots=True)
class Usage:
    """Billable quantities and cost of one request at one deployment."""

    output_megapixels: Fraction
    input_megapixels: Fraction
    cost_micros: int
    output_pixels: int = 0  # pixels actually produced (all n images): what latency scales with

    @property
    def megapixels(self) -> Fraction:
        return self.output_megapixels + self.input_megapixels


@dataclass(frozen=True, slots=True)
class PricingRule:
    """Per-megapixel prices and the rules for counting megapixels."""

    output_micros_per_mp: int
    input_micros_per_mp: int = 0
    mp_divisor: int = 1_048_576
    rounding: Rounding = Rounding.CEIL
    min_mp_per_image: Fraction = Fraction(0)
    # Providers resize reference images down to this many megapixels before use (and billing).
    input_max_mp: Fraction | None = None
    input_billing: InputBilling = InputBilling.PER_REQUEST
    output_basis: OutputBasis = OutputBasis.PIXELS

    def _billable(self, megapixels: Fraction) -> Fraction:
        if self.rounding is Rounding.CEIL:
            megapixels = Fraction(math.ceil(megapixels))
        return max(megapixels, self.min_mp_per_image)

    def usage(self, request: ImageRequest, nominal_mp: Fraction | None = None) -> Usage:
        """Billable megapixels and cost for `request`; `nominal_mp` is the size's provider tier, if any."""
        if self.output_basis is OutputBasis.NOMINAL and nominal_mp is not None:
            per_image = nominal_mp
        else:
            per_image = Fraction(request.width * request.height, self.mp_divisor)
        output_mp = self._billable(per_image) * request.n

        input_mp = Fraction(0)
        if self.input_micros_per_mp and request.images:
            for image in request.images:
                mp = Fraction(image.pixels, self.mp_divisor)
                if self.input_max_mp is not None:
                    mp = min(mp, self.input_max_mp)
                input_mp += self._billable(mp)
            if self.input_billing is InputBilling.PER_OUTPUT_IMAGE:
                input_mp *= request.n

        cost = output_mp * self.output_micros_per_mp + input_mp * self.input_micros_per_mp
        return Usage(
            output_megapixels=output_mp,
            input_megapixels=input_mp,
            cost_micros=math.ceil(cost),
            output_pixels=request.width * request.height * request.n,
        )


def format_usd(micros: int) -> str:
    """Integer micro-USD as an exact decimal string, e.g. 5000 → '0.005000'."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def parse_usd_micros(text: str) -> int:
    """A decimal USD amount ('0.005') as integer micro-USD; rejects sub-micro-dollar precision."""
    value = Fraction(text) * MICROS_PER_USD
    if value.denominator != 1:
        raise ValueError(f"{text!r} USD is not a whole number of micro-dollars")
    return int(value)
