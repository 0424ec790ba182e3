"""FalAdapter against the fal queue simulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.catalog import Catalog, Deployment
from gateway.exceptions import (
    ContentPolicyViolation,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejectedInput,
    ProviderTimeout,
    ProviderUnavailable,
)
from gateway.types import (
    CancelOutcome,
    ImageFormat,
    ImageRequest,
    JobCancelled,
    JobStarted,
    JobSucceeded,
    ProviderJob,
    TraceEvent,
)
from providers.base import ProviderEndpoint
from providers.fal import FalAdapter, FalConventions
from providers.http import SameOriginAuth
from providers.simulators.server import SimulatorThread
from tests.providers.harness import Events, SimControl, endpoint, png
from tests.providers.harness import image_request as build_request

CATALOG = Path(__file__).resolve().parents[2] / "config" / "models.yaml"


def fal_endpoint(sims: SimulatorThread, *, api_key: str | None = None, read_timeout: float = 5) -> ProviderEndpoint:
    return endpoint(sims.fal_url, sims.fal_key if api_key is None else api_key, read_timeout=read_timeout)


def image_request(**fields: Any) -> ImageRequest:
    """fal takes any size: 1024x768 by default here, so a size mix-up would show."""
    return build_request(**{"size": (1024, 768), **fields})


@pytest.fixture(scope="module")
def deployments() -> dict[str, Deployment]:
    return {d.key: d for d in Catalog.from_yaml(CATALOG).deployments if d.provider == "fal"}


@pytest.fixture
def t2i(deployments: dict[str, Deployment]) -> Deployment:
    return deployments["fal/flux.2-klein-4b"]


@pytest.fixture
async def control(sims: SimulatorThread) -> AsyncIterator[SimControl]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield SimControl(client, sims.fal_url)


@pytest.fixture
async def fal(sims: SimulatorThread) -> AsyncIterator[FalAdapter]:
    adapter = FalAdapter(fal_endpoint(sims))
    try:
        yield adapter
    finally:
        await adapter.aclose()


async def test_generate_one_image(fal: FalAdapter, t2i: Deployment, control: SimControl, sims: SimulatorThread) -> None:
    events = Events()

    result = await fal.generate(t2i, image_request(), trace=events)

    [job] = result.jobs
    assert events == [JobStarted(job), JobSucceeded(job)]  # and no JobCancelled
    [image] = result.images
    assert image.url.startswith(sims.fal_url)
    assert (image.width, image.height, image.content_type) == (1024, 768, "image/png")
    assert job.provider == "fal"
    assert job.cancel_url is not None
    assert job.cancel_url.endswith(f"/requests/{job.job_id}/cancel")
    assert "inference_time" in result.metrics
    stats = await control.stats()
    assert stats["calls"]["submit"] == 1
    assert stats["calls"]["result"] == 1
    [sent] = stats["jobs"]
    assert sent["model"] == "fal-ai/flux-2/klein/4b"
    assert sent["input"] == {
        "prompt": "a lighthouse at dusk",
        "image_size": {"width": 1024, "height": 768},
        "num_images": 1,
        "output_format": "png",
        "enable_safety_checker": True,
    }


@pytest.mark.parametrize("output_format", list(ImageFormat))
async def test_generate_three_images_with_seed_and_format(
    fal: FalAdapter, t2i: Deployment, control: SimControl, output_format: ImageFormat
) -> None:
    result = await fal.generate(t2i, image_request(n=3, size=(512, 512), output_format=output_format, seed=42))

    assert len(result.images) == 3
    assert len({image.url for image in result.images}) == 3
    assert {image.content_type for image in result.images} == {output_format.content_type}
    assert result.seed == 42
    [sent] = (await control.stats())["jobs"]
    assert (sent["input"]["num_images"], sent["input"]["seed"]) == (3, 42)
    assert sent["input"]["output_format"] == output_format.value
    body = (await control.client.get(result.images[0].url)).content
    with Image.open(io.BytesIO(body)) as picture:
        assert picture.size == (512, 512)
        assert ImageFormat.from_content_type(f"image/{picture.format}") is output_format


async def test_edit_sends_every_reference_image(
    fal: FalAdapter, deployments: dict[str, Deployment], control: SimControl
) -> None:
    red, blue = (255, 0, 0), (0, 0, 255)
    request = image_request(size=(256, 128), images=(png(red), png(blue, (32, 32))))

    result = await fal.generate(deployments["fal/flux.2-klein-4b-edit"], request)

    [sent] = (await control.stats())["jobs"]
    assert sent["model"] == "fal-ai/flux-2/klein/4b/edit"
    assert [(i["format"], i["width"], i["height"]) for i in sent["input"]["image_urls"]] == [
        ("png", 64, 48),
        ("png", 32, 32),
    ]
    body = (await control.client.get(result.images[0].url)).content
    with Image.open(io.BytesIO(body)) as picture:
        rgb = picture.convert("RGB")
        # The simulator paints input i into vertical band i of k.
        assert rgb.getpixel((64, 64)) == red
        assert rgb.getpixel((192, 64)) == blue


@pytest.mark.parametrize(
    ("kind", "on", "expected"),
    [
        ("http_500", "submit", ProviderUnavailable),
        ("http_500", "result", ProviderUnavailable),
        ("http_503", "status", ProviderUnavailable),
        ("malformed", "submit", ProviderUnavailable),
        ("malformed", "status", ProviderUnavailable),
        ("malformed", "result", ProviderUnavailable),
        ("model_error", "submit", ProviderUnavailable),
        ("nsfw", "submit", ContentPolicyViolation),
    ],
)
async def test_fault_becomes_the_right_error(
    fal: FalAdapter, t2i: Deployment, control: SimControl, kind: str, on: str, expected: type[ProviderError]
) -> None:
    await control.fault(kind, on)

    with pytest.raises(expected) as caught:
        await fal.generate(t2i, image_request())

    assert type(caught.value) is expected
    assert caught.value.provider == "fal"


async def test_rate_limit_carries_retry_after(fal: FalAdapter, t2i: Deployment, control: SimControl) -> None:
    await control.fault("http_429", "submit", retry_after=7)

    with pytest.raises(ProviderRateLimited) as caught:
        await fal.generate(t2i, image_request())

    assert caught.value.retry_after == 7


async def test_validation_fault_names_the_field(fal: FalAdapter, t2i: Deployment, control: SimControl) -> None:
    await control.fault("validation", "submit")

    with pytest.raises(ProviderRejectedInput) as caught:
        await fal.generate(t2i, image_request())

    assert caught.value.param == "prompt"


async def test_input_fal_refuses_names_the_field(fal: FalAdapter, t2i: Deployment) -> None:
    with pytest.raises(ProviderRejectedInput) as caught:
        await fal.generate(t2i, image_request(n=9))  # klein takes at most 4

    assert caught.value.param == "num_images"
    assert "num_images" in str(caught.value)


async def test_failed_poll_cancels_the_job(fal: FalAdapter, t2i: Deployment, control: SimControl) -> None:
    await control.slow_jobs()
    await control.fault("http_500", "status")
    events = Events()

    with pytest.raises(ProviderUnavailable):
        await fal.generate(t2i, image_request(), trace=events)

    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.CANCELLED)]
    assert (await control.stats())["cancels"] == 1


async def test_a_completed_job_whose_result_fetch_fails_is_reported_as_succeeded(
    fal: FalAdapter, t2i: Deployment, control: SimControl
) -> None:
    await control.fault("http_500", "result")
    events = Events()

    with pytest.raises(ProviderUnavailable):
        await fal.generate(t2i, image_request(), trace=events)

    # fal bills the finished job although we never got its images: metering must know it finished
    [job] = events.started()
    assert events == [JobStarted(job), JobSucceeded(job)]


async def test_read_timeout_is_provider_timeout(sims: SimulatorThread, t2i: Deployment, control: SimControl) -> None:
    await control.slow_jobs()
    await control.fault("hang", "status")
    adapter = FalAdapter(fal_endpoint(sims, read_timeout=0.3))
    try:
        with pytest.raises(ProviderTimeout):
            await adapter.generate(t2i, image_request())
    finally:
        await adapter.aclose()

    assert (await control.stats())["cancels"] == 1


@pytest.mark.parametrize(("kind", "on"), [("hang", "status"), ("stuck", "submit")])
async def test_deadline_cancels_the_job_at_fal(
    fal: FalAdapter, t2i: Deployment, control: SimControl, kind: str, on: str
) -> None:
    await control.slow_jobs()
    await control.fault(kind, on)
    events = Events()
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await fal.generate(t2i, image_request(), trace=events)

    assert time.monotonic() - started < 1.5
    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.CANCELLED)]
    stats = await control.stats()
    assert stats["cancels"] == 1
    assert stats["calls"]["cancel"] == 1


async def test_cancelling_the_task_cancels_the_queued_job(
    fal: FalAdapter, t2i: Deployment, control: SimControl
) -> None:
    await control.fault("stuck", "submit")
    events = Events()
    task = asyncio.create_task(fal.generate(t2i, image_request(), trace=events))
    await events.wait_for(1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.CANCELLED)]
    stats = await control.stats()
    assert (stats["cancels"], stats["jobs"][0]["id"]) == (1, job.job_id)
    # fal shows a cancelled job as COMPLETED with an error; cancelling it again is still accepted.
    assert await fal.cancel(job) is CancelOutcome.CANCELLED
    assert (await control.stats())["cancels"] == 1


async def test_a_failed_cancel_is_reported_and_the_cancellation_propagates(
    fal: FalAdapter, t2i: Deployment, control: SimControl
) -> None:
    await control.slow_jobs()
    await control.fault("http_500", "cancel")
    events = Events()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await fal.generate(t2i, image_request(), trace=events)

    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.FAILED)]
    stats = await control.stats()
    assert (stats["calls"]["cancel"], stats["cancels"]) == (1, 0)
    with pytest.raises(ProviderUnavailable):  # called directly, cancel still raises
        await fal.cancel(job)


async def test_a_cancel_that_takes_too_long_is_failed(
    sims: SimulatorThread, t2i: Deployment, control: SimControl
) -> None:
    await control.slow_jobs()
    await control.fault("hang", "cancel")
    events = Events()
    adapter = FalAdapter(fal_endpoint(sims), conventions=FalConventions(cancel_timeout=0.3))
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await adapter.generate(t2i, image_request(), trace=events)
    finally:
        await adapter.aclose()

    assert time.monotonic() - started < 1.2  # the deadline, then at most the cancel timeout
    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.FAILED)]


class TraceBug(Exception):
    """What a broken trace callback raises."""


@pytest.mark.parametrize("broken", [JobStarted, JobCancelled])
async def test_a_raising_trace_propagates_but_the_job_is_still_cancelled(
    fal: FalAdapter, t2i: Deployment, control: SimControl, broken: type[TraceEvent]
) -> None:
    await control.slow_jobs()
    await control.fault("hang", "status")

    def trace(event: TraceEvent) -> None:
        if isinstance(event, broken):
            raise TraceBug

    with pytest.raises(TraceBug):
        async with asyncio.timeout(0.3):
            await fal.generate(t2i, image_request(), trace=trace)

    assert (await control.stats())["cancels"] == 1


async def test_deadline_during_submit_is_prompt(fal: FalAdapter, t2i: Deployment, control: SimControl) -> None:
    await control.fault("hang", "submit")
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await fal.generate(t2i, image_request())

    assert time.monotonic() - started < 1


async def test_wrong_key_is_auth_error_without_the_key(sims: SimulatorThread, t2i: Deployment) -> None:
    wrong_key = "fal-wrong-key-0123456789"
    adapter = FalAdapter(fal_endpoint(sims, api_key=wrong_key))
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await adapter.generate(t2i, image_request())
    finally:
        await adapter.aclose()

    assert wrong_key not in str(caught.value)
    assert sims.fal_key not in str(caught.value)


async def test_cancel_outcomes_of_finished_and_unknown_jobs(
    fal: FalAdapter, t2i: Deployment, control: SimControl
) -> None:
    result = await fal.generate(t2i, image_request())
    [job] = result.jobs
    assert job.cancel_url is not None
    unknown = ProviderJob("fal", "no-such-job", job.cancel_url.replace(job.job_id, "no-such-job"))

    assert await fal.cancel(job) is CancelOutcome.ALREADY_FINISHED  # 400 ALREADY_COMPLETED: fal bills it
    assert await fal.cancel(unknown) is CancelOutcome.NOT_FOUND  # 404
    assert await fal.cancel(ProviderJob("fal", "no-such-job", None)) is CancelOutcome.NOT_FOUND  # no request

    stats = await control.stats()
    assert (stats["calls"]["cancel"], stats["cancels"]) == (2, 0)


async def test_aclose_closes_the_client(sims: SimulatorThread, t2i: Deployment) -> None:
    async with FalAdapter(fal_endpoint(sims)) as adapter:
        await adapter.generate(t2i, image_request())

    with pytest.raises(RuntimeError):  # httpx refuses to send on a closed client
        await adapter.generate(t2i, image_request())


def test_key_goes_only_to_the_endpoint_origin() -> None:
    auth = SameOriginAuth("https://queue.fal.run", "Key secret")

    def header(url: str) -> str | None:
        request = next(auth.auth_flow(httpx.Request("GET", url)))
        value: str | None = request.headers.get("Authorization")
        return value

    assert header("https://queue.fal.run/fal-ai/flux-2/requests/1/status") == "Key secret"
    assert header("https://queue.fal.run:443/x") == "Key secret"
    assert header("http://queue.fal.run/x") is None
    assert header("https://queue.fal.run:8443/x") is None
    assert header("https://v3.fal.media/files/x.png") is None


async def test_key_is_not_sent_to_a_url_on_another_origin(
    fal: FalAdapter, t2i: Deployment, control: SimControl, sims: SimulatorThread
) -> None:
    result = await fal.generate(t2i, image_request())
    [job] = result.jobs
    assert job.cancel_url is not None and "//127.0.0.1:" in job.cancel_url
    # Same server, but "localhost" is another origin than the endpoint's 127.0.0.1: the simulator sees no key.
    foreign = ProviderJob("fal", job.job_id, job.cancel_url.replace("//127.0.0.1:", "//localhost:"))

    with pytest.raises(ProviderUnavailable, match="another origin"):
        await fal.cancel(foreign)

    assert (await control.stats())["calls"]["cancel"] == 1
