"""Text-to-image through the gateway with the official openai SDK, over real HTTP, real Redis, real simulators."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from tests.e2e.conftest import Gateway, Simulators, UsageLog


def _generate(client: OpenAI, **params):
    raw = client.images.with_raw_response.generate(prompt="a lighthouse at dusk", **params)
    return raw.headers, raw.parse()


@pytest.mark.parametrize(
    ("model", "size", "served_by"),
    [
        ("flux.2-klein-4b", "1024x1024", "replicate/flux.2-klein-4b"),  # cheapest that can make the size
        ("flux-2-klein-4b", "1024x1024", "replicate/flux.2-klein-4b"),  # alias
        ("flux.2-klein-4b", "1000x600", "fal/flux.2-klein-4b"),  # only fal makes 1000x600 exactly
        ("fal/flux.2-klein-4b", "1024x1024", "fal/flux.2-klein-4b"),  # pinned
        ("replicate/flux.2-klein-4b", "1360x768", "replicate/flux.2-klein-4b"),  # pinned
    ],
)
def test_generate_by_every_model_name(
    client: OpenAI, sims: Simulators, usage: UsageLog, model: str, size: str, served_by: str
) -> None:
    headers, response = _generate(client, model=model, size=size)
    assert headers["x-gateway-provider"] == served_by
    assert headers["x-gateway-attempts"] == f"{served_by}=ok"
    assert headers["x-request-id"].startswith("req_")
    assert len(response.data) == 1
    assert response.data[0].url.startswith("http://127.0.0.1:")
    image = Image.open(io.BytesIO(httpx.get(response.data[0].url).raise_for_status().content))
    assert f"{image.width}x{image.height}" == size

    records = usage.since_mark()
    assert len(records) == 1
    record = records[0]
    assert record["request_id"] == headers["x-request-id"]
    assert record["deployment"] == served_by
    assert record["outcome"] == "ok"
    assert int(record["cost_micros"]) == round(float(headers["x-gateway-cost-usd"]) * 1_000_000)
    provider = served_by.split("/")[0]
    assert getattr(sims, provider).stats()["calls"], "the serving simulator saw the request"


@pytest.mark.parametrize(("output_format", "pillow_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
@pytest.mark.parametrize("model", ["fal/flux.2-klein-4b", "replicate/flux.2-klein-4b"])
def test_b64_json_returns_the_exact_image(client: OpenAI, model: str, output_format: str, pillow_format: str) -> None:
    _, response = _generate(
        client, model=model, size="1248x832", response_format="b64_json", output_format=output_format, n=2
    )
    assert len(response.data) == 2
    for item in response.data:
        assert item.url is None
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert (image.format, image.size) == (pillow_format, (1248, 832))


def test_cost_headers_and_extension(client: OpenAI, sims: Simulators) -> None:
    raw = client.images.with_raw_response.generate(model="fal/flux.2-klein-4b", prompt="x", size="1536x1024", n=3)
    body = raw.http_response.json()
    # fal: $0.005/MP, 1536x1024 = 1.5 MP rounds up to 2 MP per image, 3 images.
    assert body["gateway"]["cost_micros"] == 30_000
    assert body["gateway"]["cost_usd"] == "0.030000"
    assert body["gateway"]["provider"] == "fal/flux.2-klein-4b"
    assert raw.headers["x-gateway-cost-usd"] == "0.030000"
    assert raw.headers["x-gateway-route"] == "cost"
    fal_job = sims.fal.stats()["jobs"][-1]
    assert fal_job["input"]["num_images"] == 3
    assert fal_job["input"]["image_size"] == {"width": 1536, "height": 1024}


def test_n_images_on_replicate_are_separate_predictions(client: OpenAI, sims: Simulators, usage: UsageLog) -> None:
    headers, response = _generate(client, model="flux.2-klein-4b", size="1024x1024", n=3, extra_body={"seed": 7})
    assert headers["x-gateway-provider"] == "replicate/flux.2-klein-4b"
    assert len({item.url for item in response.data}) == 3
    jobs = sims.replicate.stats()["jobs"]
    assert len(jobs) == 3
    assert sorted(job["input"]["seed"] for job in jobs) == [7, 8, 9]
    assert [r["cost_micros"] for r in usage.since_mark()] == ["3000"]


def test_plain_http_client_and_unknown_fields(gateway: Gateway, sims: Simulators) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/images/generations",
        headers={"Authorization": f"Bearer {gateway.key}"},
        json={
            "model": "flux.2-klein-4b",
            "prompt": "a cat",
            "quality": "hd",
            "style": "vivid",
            "size": "auto",
            "user": "team-a",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"created", "data", "output_format", "gateway"}
