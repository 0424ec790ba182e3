from fractions import Fraction

import pytest

from gateway.catalog import Catalog
from gateway.pricing import (
    InputBilling,
    OutputBasis,
    PricingRule,
    Rounding,
    format_usd,
    parse_usd_micros,
)
from gateway.settings import PROJECT_ROOT
from gateway.types import ImageFormat, ImageRequest, InputImage, Mode


def _request(
    width: int = 1024, height: int = 1024, n: int = 1, inputs: tuple[tuple[int, int], ...] = ()
) -> ImageRequest:
    images = tuple(InputImage(b"", ImageFormat.PNG, w, h) for w, h in inputs)
    return ImageRequest("req", Mode.EDIT if images else Mode.GENERATE, "p", width, height, n=n, images=images)


def test_ceil_rounds_each_image_up_to_whole_megapixels() -> None:
    rule = PricingRule(output_micros_per_mp=5000)
    assert rule.usage(_request(1024, 1024)).cost_micros == 5000
    assert rule.usage(_request(1024, 1025)).cost_micros == 10000  # one pixel row over 1 MP
    assert rule.usage(_request(1536, 1024, n=3)).cost_micros == 3 * 2 * 5000


def test_divisor_changes_the_bill() -> None:
    decimal = PricingRule(output_micros_per_mp=5000, mp_divisor=1_000_000)
    assert decimal.usage(_request(1024, 1024)).cost_micros == 10000  # 1.048576 MP rounds up to 2


def test_exact_rounding_rounds_the_total_up_to_a_whole_micro_dollar() -> None:
    rule = PricingRule(output_micros_per_mp=1000, rounding=Rounding.EXACT)
    usage = rule.usage(_request(1000, 1000))
    assert usage.output_megapixels == Fraction(1_000_000, 1_048_576)
    assert usage.cost_micros == 954  # 953.67… rounded up, never down


def test_minimum_megapixels_per_image() -> None:
    rule = PricingRule(output_micros_per_mp=5000, min_mp_per_image=Fraction(1))
    assert rule.usage(_request(64, 64, n=2)).cost_micros == 10000


def test_inputs_billed_once_per_request_and_capped() -> None:
    rule = PricingRule(output_micros_per_mp=10000, input_micros_per_mp=10000, input_max_mp=Fraction(1))
    usage = rule.usage(_request(1024, 1024, n=2, inputs=((2048, 2048), (512, 512))))
    assert usage.input_megapixels == 2  # 4 MP capped to 1, 0.25 MP rounded up to 1
    assert usage.cost_micros == 2 * 10000 + 2 * 10000


def test_inputs_billed_per_output_image() -> None:
    rule = PricingRule(output_micros_per_mp=1000, input_micros_per_mp=1000, input_billing=InputBilling.PER_OUTPUT_IMAGE)
    usage = rule.usage(_request(1024, 1024, n=3, inputs=((1024, 1024),)))
    assert usage.input_megapixels == 3
    assert usage.cost_micros == 3000 + 3000


def test_nominal_basis_bills_the_provider_tier() -> None:
    rule = PricingRule(output_micros_per_mp=1000, output_basis=OutputBasis.NOMINAL)
    assert rule.usage(_request(1456, 1456), nominal_mp=Fraction(2)).cost_micros == 2000  # 2.02 MP of pixels


def test_catalog_prices_for_a_1024_square() -> None:
    catalog = Catalog.from_yaml(PROJECT_ROOT / "config" / "models.yaml")
    costs = {
        d.key: d.pricing.usage(_request(), d.sizes.nominal_megapixels(1024, 1024)).cost_micros
        for d in catalog.deployments
        if Mode.GENERATE in d.modes
    }
    assert costs == {"fal/flux.2-klein-4b": 5000, "replicate/flux.2-klein-4b": 1000}


@pytest.mark.parametrize(("text", "micros"), [("0.005", 5000), ("0", 0), ("12.5", 12_500_000), ("0.000001", 1)])
def test_parse_usd(text: str, micros: int) -> None:
    assert parse_usd_micros(text) == micros


def test_parse_usd_rejects_sub_micro_precision() -> None:
    with pytest.raises(ValueError, match="micro-dollars"):
        parse_usd_micros("0.0000001")


def test_format_usd() -> None:
    assert format_usd(5000) == "0.005000"
    assert format_usd(12_345_678) == "12.345678"
    assert format_usd(-1) == "-0.000001"
