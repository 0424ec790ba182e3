import pytest

from gateway.catalog import Catalog
from gateway.exceptions import InvalidRequest
from gateway.routing.candidates import eligible_candidates
from gateway.routing.policy import RoutePreferences, Router
from gateway.settings import PROJECT_ROOT
from gateway.types import ImageFormat, ImageRequest, InputImage, Mode

CATALOG = Catalog.from_yaml(PROJECT_ROOT / "config" / "models.yaml")
IMAGE = InputImage(b"", ImageFormat.PNG, 512, 512)


def _request(width: int, height: int, mode: Mode = Mode.GENERATE) -> ImageRequest:
    images = (IMAGE,) if mode is Mode.EDIT else ()
    return ImageRequest("r", mode, "p", width, height, images=images)


def _keys(name: str, request: ImageRequest) -> list[str]:
    ref = CATALOG.resolve(name)
    plan = Router().plan(eligible_candidates(ref, request), {}, ref.model.routing, RoutePreferences(), now=0.0)
    return [r.key for r in plan.ranked]


def test_cheapest_first_when_both_can_produce_the_size() -> None:
    assert _keys("flux.2-klein-4b", _request(1024, 1024)) == ["replicate/flux.2-klein-4b", "fal/flux.2-klein-4b"]


def test_only_deployments_that_produce_the_exact_size() -> None:
    assert _keys("flux.2-klein-4b", _request(1000, 1000)) == ["fal/flux.2-klein-4b"]


def test_edit_uses_edit_deployments() -> None:
    assert _keys("flux.2-klein-4b", _request(1024, 1024, Mode.EDIT)) == [
        "replicate/flux.2-klein-4b",
        "fal/flux.2-klein-4b-edit",
    ]


def test_pinning_a_provider() -> None:
    assert _keys("fal/flux.2-klein-4b", _request(1024, 1024)) == ["fal/flux.2-klein-4b"]
    assert _keys("fal/flux.2-klein-4b", _request(1024, 1024, Mode.EDIT)) == ["fal/flux.2-klein-4b-edit"]


def test_pinned_provider_that_cannot_make_the_size_names_the_nearest() -> None:
    with pytest.raises(InvalidRequest, match=r"nearest available: 1024x1024") as info:
        _keys("replicate/flux.2-klein-4b", _request(1000, 1000))
    assert info.value.param == "size"
