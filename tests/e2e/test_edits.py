"""Edits with 1 and 4 reference images via the openai SDK, proving every image reached the provider."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from tests.e2e.conftest import Gateway, Simulators, UsageLog, solid_png

COLORS = [(230, 20, 20), (20, 200, 40), (30, 60, 220), (240, 200, 10)]


def _band_colors(b64: str, bands: int) -> list[tuple[int, int, int]]:
    image = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    w, h = image.size
    return [image.getpixel((int((i + 0.5) * w / bands), h // 2)) for i in range(bands)]


def _close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("model", ["flux.2-klein-4b", "fal/flux.2-klein-4b", "fal/flux.2-klein-4b-edit"])
@pytest.mark.parametrize("count", [1, 4])
def test_edit_with_every_image_arriving(
    client: OpenAI, sims: Simulators, usage: UsageLog, model: str, count: int
) -> None:
    files = [(f"ref{i}.png", solid_png(COLORS[i]), "image/png") for i in range(count)]
    raw = client.images.with_raw_response.edit(
        model=model,
        image=files if count > 1 else files[0],  # a list goes as image[], one file as image
        prompt="blend these",
        size="1024x1024",
        response_format="b64_json",
    )
    response = raw.parse()
    served_by = raw.headers["x-gateway-provider"]
    assert served_by == ("fal/flux.2-klein-4b-edit" if model.startswith("fal/") else "replicate/flux.2-klein-4b")
    colors = _band_colors(response.data[0].b64_json, count)
    for got, sent in zip(colors, COLORS[:count], strict=True):
        assert _close(got, sent), f"band colours {colors} do not show inputs {COLORS[:count]}"

    simulator = sims.fal if served_by.startswith("fal/") else sims.replicate
    job_input = simulator.stats()["jobs"][-1]["input"]
    sent_images = job_input["image_urls"] if served_by.startswith("fal/") else job_input["images"]
    assert len(sent_images) == count
    records = usage.since_mark()
    assert len(records) == 1
    assert records[0]["mode"] == "edit"
    assert records[0]["input_images"] == str(count)


def test_repeated_image_fields_as_curl_sends_them(gateway: Gateway, sims: Simulators) -> None:
    files = [("image", (f"{i}.png", solid_png(COLORS[i]), "image/png")) for i in range(3)]
    response = httpx.post(
        f"{gateway.url}/v1/images/edits",
        headers={"Authorization": f"Bearer {gateway.key}"},
        data={
            "model": "fal/flux.2-klein-4b",
            "prompt": "mix",
            "size": "768x512",
            "response_format": "b64_json",
            "n": "2",
            "output_format": "webp",
        },
        files=files,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 2
    for item in body["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        assert (image.format, image.size) == ("WEBP", (768, 512))
    # fal edit: $0.010/MP, 2 outputs at 1 MP + 3 inputs at 1 MP each.
    assert body["gateway"]["cost_micros"] == 50_000
