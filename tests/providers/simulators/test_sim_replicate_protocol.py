"""The Replicate simulator over real HTTP: prediction objects, Prefer: wait, validation, sizes, cancel, auth."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.catalog import Catalog
from gateway.sizes import TableSizes
from providers.simulators.replicate_schema import KleinSchema, output_size
from providers.simulators.server import SimulatorThread

CREATE = "/v1/models/black-forest-labs/flux-2-klein-4b/predictions"
PREDICTION_KEYS = {
    "id",
    "model",
    "version",
    "input",
    "logs",
    "output",
    "error",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "data_removed",
    "metrics",
    "urls",
}


def create(client: httpx.Client, values: dict[str, Any], prefer: str | None = None) -> httpx.Response:
    headers = {"Prefer": prefer} if prefer else {}
    return client.post(CREATE, json={"input": values}, headers=headers)


def test_prediction_object_and_status_progression(sims: SimulatorThread, replicate_http: httpx.Client) -> None:
    replicate_http.post("/_sim/config", json={"queue_ms": 200, "run_ms": 200}).raise_for_status()
    response = create(replicate_http, {"prompt": "a lighthouse", "seed": 3})
    assert response.status_code == 201
    prediction = response.json()
    assert set(prediction) == PREDICTION_KEYS
    assert prediction["status"] == "starting"
    assert (prediction["output"], prediction["error"], prediction["started_at"]) == (None, None, None)
    assert prediction["model"] == "black-forest-labs/flux-2-klein-4b"
    assert prediction["input"] == {"prompt": "a lighthouse", "seed": 3}
    assert len(prediction["id"]) == 26
    get_url = f"{sims.replicate_url}/v1/predictions/{prediction['id']}"
    assert prediction["urls"]["get"] == get_url == response.headers["location"]
    assert prediction["urls"]["cancel"] == f"{get_url}/cancel"
    assert prediction["created_at"].endswith("Z")

    time.sleep(0.25)
    processing = replicate_http.get(get_url).json()
    assert processing["status"] == "processing"
    assert processing["started_at"] is not None
    assert processing["output"] is None
    assert processing["logs"].startswith("Using seed: 3")

    time.sleep(0.2)
    done = replicate_http.get(get_url).json()
    assert done["status"] == "succeeded"
    assert done["completed_at"] >= done["started_at"] >= done["created_at"]
    assert done["metrics"]["predict_time"] == pytest.approx(0.2)
    [url] = done["output"]
    assert url == f"{sims.replicate_url}/files/{done['id']}/0.jpg"


def test_prefer_wait_returns_the_terminal_prediction(replicate_http: httpx.Client) -> None:
    replicate_http.post("/_sim/config", json={"queue_ms": 50, "run_ms": 100}).raise_for_status()
    started = time.monotonic()
    prediction = create(replicate_http, {"prompt": "quick"}, prefer="wait").json()
    assert 0.14 <= time.monotonic() - started < 2
    assert prediction["status"] == "succeeded"
    assert len(prediction["output"]) == 1


def test_prefer_wait_n_times_out_as_starting_even_while_processing(replicate_http: httpx.Client) -> None:
    replicate_http.post("/_sim/config", json={"queue_ms": 0, "run_ms": 5000}).raise_for_status()
    started = time.monotonic()
    prediction = create(replicate_http, {"prompt": "slow"}, prefer="wait=1").json()
    assert 0.95 <= time.monotonic() - started < 2
    # It is processing, but replicate-python's run() only polls a `starting` prediction.
    assert (prediction["status"], prediction["output"], prediction["started_at"]) == ("starting", None, None)
    assert replicate_http.get(prediction["urls"]["get"]).json()["status"] == "processing"


def test_prefer_wait_ends_early_when_the_prediction_is_cancelled(replicate_http: httpx.Client) -> None:
    replicate_http.post("/_sim/config", json={"queue_ms": 5000}).raise_for_status()
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(create, replicate_http, {"prompt": "held"}, "wait=10")
        deadline = time.monotonic() + 5
        while not (jobs := replicate_http.get("/_sim/stats").json()["jobs"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        replicate_http.post(f"/v1/predictions/{jobs[0]['id']}/cancel").raise_for_status()
        answer = held.result(timeout=5)
    assert time.monotonic() - started < 1
    assert (answer.status_code, answer.json()["status"]) == (201, "canceled")


def test_no_prefer_header_returns_immediately(replicate_http: httpx.Client) -> None:
    replicate_http.post("/_sim/config", json={"run_ms": 3000}).raise_for_status()
    started = time.monotonic()
    assert create(replicate_http, {"prompt": "async"}).json()["status"] == "starting"
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("values", "field", "kind"),
    [
        ({}, "input", "required"),
        ({"prompt": 5}, "input.prompt", "invalid_type"),
        ({"prompt": "x", "aspect_ratio": "7:5"}, "input.aspect_ratio", "enum"),
        ({"prompt": "x", "output_megapixels": "4"}, "input.output_megapixels", "enum"),
        ({"prompt": "x", "output_megapixels": 1}, "input.output_megapixels", "invalid_type"),
        ({"prompt": "x", "output_format": "jpeg"}, "input.output_format", "enum"),
        ({"prompt": "x", "output_quality": 101}, "input.output_quality", "number_lte"),
        ({"prompt": "x", "output_quality": -1}, "input.output_quality", "number_gte"),
        ({"prompt": "x", "seed": "1"}, "input.seed", "invalid_type"),
        ({"prompt": "x", "go_fast": "yes"}, "input.go_fast", "invalid_type"),
        ({"prompt": "x", "disable_safety_checker": 1}, "input.disable_safety_checker", "invalid_type"),
        ({"prompt": "x", "num_outputs": 2}, "input", "additional_property_not_allowed"),
        ({"prompt": "x", "images": "data:,"}, "input.images", "invalid_type"),
        ({"prompt": "x", "images": ["https://example.com/a.png"]}, "input.images.0", "format"),
    ],
)
def test_invalid_input_is_a_422_problem_at_create(
    replicate_http: httpx.Client, values: dict[str, Any], field: str, kind: str
) -> None:
    response = create(replicate_http, values)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["title"], problem["status"]) == ("Input validation failed", 422)
    [invalid] = problem["invalid_fields"]
    assert (invalid["field"], invalid["type"]) == (field, kind)
    assert problem["detail"] == f"- {field}: {invalid['description']}\n"
    assert replicate_http.get("/_sim/stats").json()["jobs"] == []


def test_more_than_five_images_is_rejected(replicate_http: httpx.Client, data_uri: Any) -> None:
    response = create(replicate_http, {"prompt": "x", "images": [data_uri((1, 1, 1))] * 6})
    assert response.json()["invalid_fields"][0]["type"] == "array_max_items"


def test_body_without_input_and_unknown_model(replicate_http: httpx.Client) -> None:
    assert replicate_http.post(CREATE, json={"prompt": "x"}).status_code == 422
    assert replicate_http.post(CREATE, content=b"{").status_code == 400
    missing = replicate_http.post("/v1/models/black-forest-labs/flux-2-klein-9b/predictions", json={"input": {}})
    assert missing.status_code == 404
    assert replicate_http.get("/v1/predictions/doesnotexist").status_code == 404
    assert replicate_http.post("/v1/predictions/doesnotexist/cancel").status_code == 404


def test_create_by_version(replicate_http: httpx.Client) -> None:
    version = "8e9c42d77b10a2a41af823ac4500f7545be6ebc4e745830fc3f3de10de200542"
    ok = replicate_http.post("/v1/predictions", json={"version": version, "input": {"prompt": "v"}})
    assert (ok.status_code, ok.json()["model"], ok.json()["version"]) == (
        201,
        "black-forest-labs/flux-2-klein-4b",
        version,
    )
    bad = replicate_http.post("/v1/predictions", json={"version": "0" * 64, "input": {"prompt": "v"}})
    assert (bad.status_code, bad.json()["title"]) == (422, "Invalid version or not permitted")


def test_every_catalog_size_matches_what_the_simulator_renders(
    http: httpx.Client, replicate_http: httpx.Client
) -> None:
    deployment = next(d for d in Catalog.from_yaml("config/models.yaml").deployments if d.provider == "replicate")
    assert isinstance(deployment.sizes, TableSizes)
    checked = 0
    for option in deployment.sizes.options:
        params = dict(option.params)
        assert output_size(params["aspect_ratio"], params["output_megapixels"]) == (option.width, option.height)
        if params["output_megapixels"] == "1" and params["aspect_ratio"] in ("16:9", "4:5", "21:9"):
            # End to end for a few: the served file really has the catalog's size.
            prediction = create(replicate_http, {"prompt": "size", **params, "output_format": "png"}, "wait").json()
            with Image.open(io.BytesIO(http.get(prediction["output"][0]).content)) as picture:
                assert picture.size == (option.width, option.height)
            checked += 1
    assert checked == 3


def test_every_listed_ratio_and_tier_has_a_grid_aligned_size() -> None:
    schema = KleinSchema()
    for ratio in schema.aspect_ratios:
        for tier in schema.megapixel_tiers:
            width, height = output_size(ratio, tier)
            assert width % 16 == 0 and height % 16 == 0
            assert abs(width * height / (float(tier) * 2**20) - 1) < 0.03, (ratio, tier)


@pytest.mark.parametrize(("fmt", "pil"), [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_output_format_and_file_content_type(
    http: httpx.Client, replicate_http: httpx.Client, fmt: str, pil: str
) -> None:
    values = {"prompt": "fmt", "output_format": fmt, "aspect_ratio": "3:2", "output_quality": 80}
    prediction = create(replicate_http, values, "wait").json()
    [url] = prediction["output"]
    assert url.endswith(f"/0.{fmt}")
    file = http.get(url)
    assert file.headers["content-type"] == {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[fmt]
    with Image.open(io.BytesIO(file.content)) as picture:
        assert (picture.format, picture.size) == (pil, (1248, 832))
    assert http.get(url.replace("/0.", "/1.")).status_code == 404  # one image per prediction


def test_match_input_image_uses_the_nearest_ratio_of_the_first_image(
    http: httpx.Client, replicate_http: httpx.Client, data_uri: Any
) -> None:
    values = {"prompt": "match", "aspect_ratio": "match_input_image", "images": [data_uri((5, 5, 5), (300, 600))]}
    prediction = create(replicate_http, values, "wait").json()
    with Image.open(io.BytesIO(http.get(prediction["output"][0]).content)) as picture:
        assert picture.size == (768, 1360)  # 1:2 is nearest to 9:16


def test_edit_bands_show_every_input_image_in_order(
    http: httpx.Client, replicate_http: httpx.Client, data_uri: Any
) -> None:
    colors = [(250, 200, 0), (0, 120, 255), (255, 0, 160), (10, 10, 10), (240, 240, 240)]
    values = {"prompt": "x", "images": [data_uri(c) for c in colors], "output_format": "png", "aspect_ratio": "21:9"}
    prediction = create(replicate_http, values, "wait").json()
    with Image.open(io.BytesIO(http.get(prediction["output"][0]).content)) as picture:
        rgb = picture.convert("RGB")
        width, height = rgb.size
        for index, color in enumerate(colors):
            assert rgb.getpixel(((2 * index + 1) * width // 10, height // 2)) == color


def test_cancel_semantics(replicate_http: httpx.Client) -> None:
    replicate_http.post("/_sim/config", json={"queue_ms": 5000}).raise_for_status()
    queued = create(replicate_http, {"prompt": "cancel me"}).json()
    cancelled = replicate_http.post(queued["urls"]["cancel"])
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert (body["status"], body["output"], body["started_at"]) == ("canceled", None, None)
    assert body["completed_at"] is not None
    assert replicate_http.get(queued["urls"]["get"]).json()["status"] == "canceled"
    again = replicate_http.post(queued["urls"]["cancel"])
    assert (again.status_code, again.json()) == (200, replicate_http.get(queued["urls"]["get"]).json())

    replicate_http.post("/_sim/config", json={"queue_ms": 0}).raise_for_status()
    done = create(replicate_http, {"prompt": "done"}, "wait").json()
    unchanged = replicate_http.post(done["urls"]["cancel"])
    assert (unchanged.status_code, unchanged.json()["status"]) == (200, "succeeded")
    stats = replicate_http.get("/_sim/stats").json()
    assert stats["cancels"] == 1
    assert stats["calls"]["cancel"] == 3


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-xyz789", "Key {key}", "Bearer", "{key}"],
    ids=["none", "wrong", "key-scheme", "empty", "bare"],
)
def test_auth_failures_are_401_problems_without_echoing_the_token(
    http: httpx.Client, sims: SimulatorThread, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization.format(key=sims.replicate_key)}
    for method, path in [("POST", CREATE), ("GET", "/v1/predictions/x"), ("POST", "/v1/predictions/x/cancel")]:
        response = http.request(method, sims.replicate_url + path, headers=headers, json={"input": {"prompt": "x"}})
        assert response.status_code == 401
        assert response.json()["title"] == "Unauthenticated"
        assert response.json()["status"] == 401
        assert "wrong-token-xyz789" not in response.text
        assert sims.replicate_key not in response.text


def test_token_scheme_is_accepted(http: httpx.Client, sims: SimulatorThread) -> None:
    headers = {"Authorization": f"Token {sims.replicate_key}"}
    response = http.post(sims.replicate_url + CREATE, headers=headers, json={"input": {"prompt": "x"}})
    assert response.status_code == 201
