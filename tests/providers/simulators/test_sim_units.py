"""The simulators' building blocks, without HTTP: rendering, jobs, faults, inputs and Replicate sizes."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import pytest
from PIL import Image

from providers.simulators import render
from providers.simulators.control import Fault, FaultKind, FaultScript
from providers.simulators.inputs import DataUriError, decode_data_uri, summarize_input
from providers.simulators.jobs import Job, JobStore, Phase
from providers.simulators.render import RenderCache, RenderSpec, render_image
from providers.simulators.replicate_schema import KleinSchema, nearest_ratio, validate_prediction_input


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- rendering ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("width", [64, 101, 1024])
def test_edit_band_centres_are_the_input_colours(k: int, width: int) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)][:k]
    spec = RenderSpec(width, 80, "png", seed=1, prompt="p", inputs=tuple(png(c) for c in colors))
    picture = decode(render_image(spec)).convert("RGB")
    assert picture.size == (width, 80)
    for index, color in enumerate(colors):
        assert picture.getpixel(((2 * index + 1) * width // (2 * k), 40)) == color


def test_generated_picture_depends_on_seed_and_prompt_only() -> None:
    base = RenderSpec(200, 100, "png", seed=5, prompt="cat")
    assert render_image(base) == render_image(RenderSpec(200, 100, "png", seed=5, prompt="cat"))
    assert render_image(base) != render_image(RenderSpec(200, 100, "png", seed=6, prompt="cat"))
    assert render_image(base) != render_image(RenderSpec(200, 100, "png", seed=5, prompt="dog"))


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_every_format_encodes_at_the_exact_size(fmt: str, pil: str) -> None:
    picture = decode(render_image(RenderSpec(333, 77, fmt, seed=1, prompt="x", quality=50)))
    assert (picture.format, picture.size) == (pil, (333, 77))


def test_black_and_unreadable_inputs() -> None:
    black = decode(render_image(RenderSpec(50, 50, "png", seed=1, prompt="x", black=True)))
    assert black.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))
    grey = decode(render_image(RenderSpec(50, 80, "png", seed=1, prompt="x", inputs=(b"\x89PNG broken",))))
    assert grey.convert("RGB").getpixel((25, 40)) == render.UNREADABLE_INPUT_FILL


async def test_render_cache_shares_one_render_and_evicts(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[RenderSpec] = []

    def counting(spec: RenderSpec) -> bytes:
        calls.append(spec)
        return render_image(spec)

    monkeypatch.setattr(render, "render_image", counting)
    cache = RenderCache(max_entries=2)
    spec = RenderSpec(64, 64, "png", seed=1, prompt="x")
    first, second = await asyncio.gather(cache.get("a", spec), cache.get("a", spec))
    assert first == second
    assert len(calls) == 1
    await cache.get("b", spec)
    await cache.get("c", spec)
    await cache.get("a", spec)  # evicted as least recently used, so rendered again
    assert len(calls) == 4


# --- jobs -----------------------------------------------------------------------------------------------


def make_job(job_id: str = "j", *, fault: FaultKind | None = None) -> Job:
    return Job(job_id, "m", {}, {}, created_wall=1000.0, created_mono=10.0, queue_s=1.0, run_s=2.0, fault=fault)


def test_job_phase_comes_from_the_clock() -> None:
    job = make_job()
    assert [job.phase(t) for t in (10.0, 10.99, 11.0, 12.99, 13.0, 99.0)] == [
        Phase.QUEUED,
        Phase.QUEUED,
        Phase.RUNNING,
        Phase.RUNNING,
        Phase.DONE,
        Phase.DONE,
    ]
    assert job.terminal_at() == 13.0
    assert job.wall(13.0) == 1003.0
    assert not job.cancel(13.5)  # already done
    running = make_job()
    assert running.cancel(12.0)
    assert (running.phase(12.0), running.phase(99.0), running.terminal_at()) == (Phase.CANCELLED,) * 2 + (12.0,)
    assert not running.cancel(12.5)


def test_stuck_job_never_leaves_the_queue() -> None:
    job = make_job(fault=FaultKind.STUCK)
    assert job.phase(1e9) is Phase.QUEUED
    assert job.terminal_at() is None
    assert job.cancel(1e9)


def test_job_store_evicts_oldest_and_keeps_the_recent_thousand() -> None:
    store = JobStore(max_jobs=1500)
    for index in range(2000):
        store.add(make_job(str(index)))
    assert len(store) == 1500
    assert store.get("499") is None and store.get("500") is not None
    recent = store.recent()
    assert (len(recent), recent[0].id, recent[-1].id) == (1000, "1000", "1999")


# --- faults ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http_500", ("http_500", "any", None)),
        ("stuck:submit", ("stuck", "submit", None)),
        ("hang:status:3", ("hang", "status", 3)),
    ],
)
def test_fault_parse(text: str, expected: tuple[str, str, int | None]) -> None:
    fault = Fault.parse(text)
    assert (fault.kind.value, fault.on, fault.times) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [("boom", "kind must be"), ("http_500:submit:x", "invalid literal"), ("http_500:submit:0", "positive")],
)
def test_fault_parse_rejects(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Fault.parse(text)


def test_fault_script_order_and_job_level_matching() -> None:
    script = FaultScript(("submit", "status"), submit_op="submit")
    script.add(Fault(FaultKind.STUCK, "any", 1))
    script.add(Fault(FaultKind.HTTP_500, "status", 2))
    assert script.take("status") == Fault(FaultKind.HTTP_500, "status", 1)  # stuck is not a status fault
    assert script.take("submit") == Fault(FaultKind.STUCK, "any", 0)
    assert script.take("submit") is None
    assert script.take("status") is not None
    assert script.to_json() == []
    with pytest.raises(ValueError, match="submit time"):
        script.add(Fault(FaultKind.NSFW, "status"))


# --- inputs ---------------------------------------------------------------------------------------------


def as_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def test_decode_data_uri() -> None:
    image = decode_data_uri(as_uri(png((1, 2, 3), (12, 34))))
    assert (image.format, image.width, image.height) == ("png", 12, 34)
    for bad in ("https://x/y.png", "data:image/png,raw", "data:image/png;base64", as_uri(b"text")):
        with pytest.raises(DataUriError):
            decode_data_uri(bad)
    bmp = io.BytesIO()
    Image.new("RGB", (2, 2)).save(bmp, "BMP")
    with pytest.raises(DataUriError, match="not one of"):
        decode_data_uri(as_uri(bmp.getvalue(), "image/bmp"))


def test_summarize_input_replaces_data_uris_anywhere() -> None:
    uri = as_uri(png((0, 0, 0), (3, 4)))
    summary: Any = summarize_input({"a": [uri, {"b": uri}], "c": "data:,x", "n": 1})
    expected = {"format": "png", "width": 3, "height": 4, "bytes": len(png((0, 0, 0), (3, 4)))}
    assert summary["a"] == [expected, {"b": expected}]
    assert summary["c"] == {"format": None, "width": None, "height": None, "bytes": 7}
    assert summary["n"] == 1


# --- Replicate schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "ratio"), [((1000, 1000), "1:1"), ((1920, 1080), "16:9"), ((300, 600), "9:16"), ((2400, 1000), "21:9")]
)
def test_nearest_ratio(size: tuple[int, int], ratio: str) -> None:
    assert nearest_ratio(*size, KleinSchema().aspect_ratios) == ratio


def test_match_input_image_without_images_falls_back() -> None:
    checked = validate_prediction_input({"prompt": "x", "aspect_ratio": "match_input_image"}, KleinSchema())
    assert checked.output is not None
    assert (checked.output.width, checked.output.height) == (1024, 1024)


def test_schema_is_configurable() -> None:
    schema = KleinSchema(megapixel_tiers=("0.25", "1"), reject_unknown_fields=False)
    checked = validate_prediction_input({"prompt": "x", "output_megapixels": "0.25", "extra": 1}, schema)
    assert checked.output is not None
    assert (checked.output.width, checked.output.height) == (512, 512)
