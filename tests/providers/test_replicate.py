"""ReplicateAdapter against the Replicate simulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import io
import time
from collections.abc import AsyncIterator, Callable

import pytest
from PIL import Image

from gateway.catalog import Deployment
from gateway.exceptions import (
    ContentPolicyViolation,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejectedInput,
    ProviderUnavailable,
)
from gateway.types import (
    CancelOutcome,
    ImageFormat,
    JobCancelled,
    JobStarted,
    JobSucceeded,
    ProviderJob,
)
from providers.base import ProviderEndpoint
from providers.http import parse_retry_after
from providers.replicate import ReplicateAdapter, ReplicateConventions
from providers.simulators.server import SimulatorThread
from tests.providers.harness import Events, SimControl, endpoint, image_request, png

QUICK = ReplicateConventions(prefer_wait=1)  # a short blocking create keeps cancellation tests fast
POLLING = ReplicateConventions(prefer_wait=0)  # no Prefer header: every prediction is polled


def replicate_endpoint(sims: SimulatorThread, *, api_key: str | None = None) -> ProviderEndpoint:
    return endpoint(sims.replicate_url, sims.replicate_key if api_key is None else api_key)


@pytest.fixture
def control(replicate_control: SimControl) -> SimControl:
    return replicate_control


@pytest.fixture
def adapter_for(sims: SimulatorThread) -> Callable[..., ReplicateAdapter]:
    """Adapters with the given conventions (or key); each is closed by its own test."""

    def make(conventions: ReplicateConventions = QUICK, api_key: str | None = None) -> ReplicateAdapter:
        return ReplicateAdapter(replicate_endpoint(sims, api_key=api_key), conventions=conventions)

    return make


@pytest.fixture
async def replicate(adapter_for: Callable[..., ReplicateAdapter]) -> AsyncIterator[ReplicateAdapter]:
    adapter = adapter_for(QUICK)
    try:
        yield adapter
    finally:
        await adapter.aclose()


@pytest.fixture
async def polling(adapter_for: Callable[..., ReplicateAdapter]) -> AsyncIterator[ReplicateAdapter]:
    adapter = adapter_for(POLLING)
    try:
        yield adapter
    finally:
        await adapter.aclose()


async def test_generate_one_image_with_a_blocking_create(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl, sims: SimulatorThread
) -> None:
    result = await replicate.generate(klein, image_request())

    [image] = result.images
    assert image.url.startswith(sims.replicate_url)
    assert (image.width, image.height, image.content_type) == (None, None, "image/png")
    [job] = result.jobs
    assert job.provider == "replicate"
    assert job.cancel_url == f"{sims.replicate_url}/v1/predictions/{job.job_id}/cancel"
    assert "predict_time" in result.metrics
    stats = await control.stats()
    assert (stats["calls"]["create"], stats["calls"]["get"]) == (1, 0)  # Prefer: wait answered it
    [sent] = stats["jobs"]
    assert sent["model"] == "black-forest-labs/flux-2-klein-4b"
    assert sent["input"] == {
        "prompt": "a lighthouse at dusk",
        "aspect_ratio": "1:1",
        "output_megapixels": "1",
        "output_format": "png",
    }


async def test_generate_polls_without_prefer_wait(
    polling: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    result = await polling.generate(klein, image_request())

    assert len(result.images) == 1
    assert (await control.stats())["calls"]["get"] >= 1


async def test_three_images_are_three_predictions_with_distinct_seeds(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    events = Events()

    result = await replicate.generate(klein, image_request(n=3, seed=7), trace=events)

    assert len(events) == 6
    assert set(events) == {e(job) for job in result.jobs for e in (JobStarted, JobSucceeded)}  # and no JobCancelled
    assert len(result.images) == 3
    assert len({image.url for image in result.images}) == 3
    assert len({job.job_id for job in result.jobs}) == 3
    assert result.seed == 7
    stats = await control.stats()
    assert stats["calls"]["create"] == 3
    assert sorted(job["input"]["seed"] for job in stats["jobs"]) == [7, 8, 9]


async def test_random_seeds_stay_unset(replicate: ReplicateAdapter, klein: Deployment, control: SimControl) -> None:
    await replicate.generate(klein, image_request(n=2))

    assert all("seed" not in job["input"] for job in (await control.stats())["jobs"])


@pytest.mark.parametrize(("output_format", "wire"), [("jpeg", "jpg"), ("png", "png"), ("webp", "webp")])
async def test_output_format_and_size(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl, output_format: str, wire: str
) -> None:
    fmt = ImageFormat(output_format)
    result = await replicate.generate(klein, image_request(size=(1360, 768), output_format=fmt))

    [sent] = (await control.stats())["jobs"]
    assert (sent["input"]["output_format"], sent["input"]["aspect_ratio"]) == (wire, "16:9")
    assert result.images[0].content_type == fmt.content_type
    body = (await control.client.get(result.images[0].url)).content
    with Image.open(io.BytesIO(body)) as picture:
        assert ImageFormat.from_content_type(f"image/{picture.format}") is fmt
        assert picture.size == (1360, 768)  # the catalog's size table agrees with the simulator


async def test_edit_sends_every_reference_image(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    red, blue = (255, 0, 0), (0, 0, 255)

    result = await replicate.generate(klein, image_request(images=(png(red), png(blue, (32, 32)))))

    [sent] = (await control.stats())["jobs"]
    assert [(i["format"], i["width"], i["height"]) for i in sent["input"]["images"]] == [
        ("png", 64, 48),
        ("png", 32, 32),
    ]
    body = (await control.client.get(result.images[0].url)).content
    with Image.open(io.BytesIO(body)) as picture:
        rgb = picture.convert("RGB")
        # The simulator paints input i into vertical band i of k.
        assert rgb.getpixel((256, 512)) == red
        assert rgb.getpixel((768, 512)) == blue


@pytest.mark.parametrize(
    ("kind", "on", "expected"),
    [
        ("http_500", "create", ProviderUnavailable),
        ("http_503", "get", ProviderUnavailable),
        ("malformed", "create", ProviderUnavailable),
        ("malformed", "get", ProviderUnavailable),
        ("model_error", "create", ProviderUnavailable),
        ("nsfw", "create", ContentPolicyViolation),
    ],
)
async def test_fault_becomes_the_right_error(
    polling: ReplicateAdapter,
    klein: Deployment,
    control: SimControl,
    kind: str,
    on: str,
    expected: type[ProviderError],
) -> None:
    await control.fault(kind, on)

    with pytest.raises(expected) as caught:
        await polling.generate(klein, image_request())

    assert type(caught.value) is expected
    assert caught.value.provider == "replicate"


async def test_rate_limit_carries_retry_after(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    await control.fault("http_429", "create", retry_after=7)

    with pytest.raises(ProviderRateLimited) as caught:
        await replicate.generate(klein, image_request())

    assert caught.value.retry_after == 7


async def test_validation_fault_names_the_field(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    await control.fault("validation", "create")

    with pytest.raises(ProviderRejectedInput) as caught:
        await replicate.generate(klein, image_request())

    assert caught.value.param == "aspect_ratio"


async def test_a_wrong_convention_shows_as_the_field_replicate_refused(
    adapter_for: Callable[..., ReplicateAdapter], klein: Deployment
) -> None:
    formats = {ImageFormat.JPEG: "jpeg", ImageFormat.PNG: "png", ImageFormat.WEBP: "webp"}
    adapter = adapter_for(ReplicateConventions(prefer_wait=1, output_formats=formats))
    try:
        with pytest.raises(ProviderRejectedInput) as caught:
            await adapter.generate(klein, image_request(output_format=ImageFormat.JPEG))
    finally:
        await adapter.aclose()

    assert caught.value.param == "output_format"


async def test_size_outside_the_table_is_refused_before_any_request(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    with pytest.raises(ProviderRejectedInput) as caught:
        await replicate.generate(klein, image_request(size=(1000, 1000)))

    assert caught.value.param == "size"
    assert (await control.stats())["calls"]["create"] == 0


async def test_one_failed_prediction_cancels_the_others(
    polling: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    await control.slow_jobs()
    await control.fault("http_500", "create", times=1)
    events = Events()

    with pytest.raises(ProviderUnavailable):
        await polling.generate(klein, image_request(n=3), trace=events)

    await events.wait_for(4)  # a sibling still creating when cancelled reports both events afterwards
    stats = await control.wait_for(lambda s: s["cancels"] == 2)
    assert stats["cancels"] == 2
    assert {job["status"] for job in stats["jobs"]} == {"canceled"}
    started = events.started()
    assert {job.job_id for job in started} == {job["id"] for job in stats["jobs"]}
    assert events.cancelled() == dict.fromkeys(started, CancelOutcome.CANCELLED)
    assert len(events) == 4


async def test_deadline_while_polling_cancels_the_prediction(
    polling: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    await control.slow_jobs()
    await control.fault("hang", "get")
    events = Events()
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await polling.generate(klein, image_request(), trace=events)

    assert time.monotonic() - started < 1.5
    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.CANCELLED)]
    assert (await control.stats())["cancels"] == 1


async def test_cancelling_the_task_cancels_the_prediction(
    polling: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    await control.slow_jobs()
    events = Events()
    task = asyncio.create_task(polling.generate(klein, image_request(), trace=events))
    await events.wait_for(1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.CANCELLED)]
    stats = await control.stats()
    assert (stats["cancels"], stats["jobs"][0]["id"], stats["jobs"][0]["status"]) == (1, job.job_id, "canceled")


async def test_a_failed_cancel_is_reported_and_the_cancellation_propagates(
    polling: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    await control.slow_jobs()
    await control.fault("http_500", "cancel")
    events = Events()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await polling.generate(klein, image_request(), trace=events)

    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.FAILED)]
    stats = await control.stats()
    assert (stats["calls"]["cancel"], stats["cancels"], stats["jobs"][0]["status"]) == (1, 0, "processing")
    with pytest.raises(ProviderUnavailable):  # called directly, cancel still raises
        await polling.cancel(job)


@pytest.mark.parametrize("slow", ["stuck", "slow run"])
async def test_deadline_during_a_blocking_create_cancels_once_created(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl, slow: str
) -> None:
    if slow == "stuck":
        await control.fault("stuck", "create")
    else:
        await control.slow_jobs()
    events = Events()
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await replicate.generate(klein, image_request(), trace=events)

    assert time.monotonic() - started < 1  # prompt, though the create is held for prefer_wait (1 s)
    assert events == []  # the create has not answered yet: no handle, nothing to report
    await events.wait_for(2)  # it answers after prefer_wait; then the prediction is cancelled
    [job] = events.started()
    assert events == [JobStarted(job), JobCancelled(job, CancelOutcome.CANCELLED)]
    stats = await control.wait_for(lambda s: s["cancels"] == 1)
    assert (stats["cancels"], stats["jobs"][0]["id"], stats["jobs"][0]["status"]) == (1, job.job_id, "canceled")


async def test_wrong_key_is_auth_error_without_the_key(
    adapter_for: Callable[..., ReplicateAdapter], klein: Deployment, sims: SimulatorThread
) -> None:
    wrong_key = "r8_wrong_key_0123456789"
    adapter = adapter_for(api_key=wrong_key)
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await adapter.generate(klein, image_request())
    finally:
        await adapter.aclose()

    assert wrong_key not in str(caught.value)
    assert sims.replicate_key not in str(caught.value)


async def test_cancel_outcomes_of_finished_and_unknown_predictions(
    replicate: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    result = await replicate.generate(klein, image_request())
    [job] = result.jobs
    assert job.cancel_url is not None
    unknown = ProviderJob("replicate", "nosuchprediction", job.cancel_url.replace(job.job_id, "nosuchprediction"))

    assert await replicate.cancel(job) is CancelOutcome.ALREADY_FINISHED  # 200, still succeeded: billed
    assert await replicate.cancel(unknown) is CancelOutcome.NOT_FOUND  # 404
    assert await replicate.cancel(ProviderJob("replicate", "x", None)) is CancelOutcome.NOT_FOUND  # no request

    stats = await control.stats()
    assert (stats["calls"]["cancel"], stats["cancels"]) == (2, 0)
    assert stats["jobs"][0]["status"] == "succeeded"


async def test_cancel_of_a_failed_or_canceled_prediction_is_cancelled(
    replicate: ReplicateAdapter, polling: ReplicateAdapter, klein: Deployment, control: SimControl
) -> None:
    await control.fault("model_error", "create", times=1)
    events = Events()
    with pytest.raises(ProviderUnavailable):
        await replicate.generate(klein, image_request(), trace=events)
    [failed] = events.started()  # failed without output: nothing billed, so as good as cancelled

    assert await replicate.cancel(failed) is CancelOutcome.CANCELLED

    await control.slow_jobs()
    task = asyncio.create_task(polling.generate(klein, image_request(), trace=events))
    await events.wait_for(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    canceled = events.started()[1]
    assert events.cancelled() == {canceled: CancelOutcome.CANCELLED}

    assert await replicate.cancel(canceled) is CancelOutcome.CANCELLED  # again: still canceled
    stats = await control.stats()
    assert (stats["calls"]["cancel"], stats["cancels"]) == (3, 1)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)

    assert parse_retry_after("3") == 3
    assert parse_retry_after("1.5") == 1.5
    assert 55 < (parse_retry_after(in_a_minute) or 0) <= 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past: retry now
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
