"""Conformance: the official `replicate` Python SDK drives the Replicate simulator unmodified.

Served over TLS here: replicate-python turns only https:// (and data:) outputs into FileOutput objects.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ModelError, ReplicateError
from replicate.helpers import FileOutput

if TYPE_CHECKING:  # fixtures' types; conftest modules are not importable at run time
    from conftest import TlsSimulators

MODEL = "black-forest-labs/flux-2-klein-4b"


@pytest.fixture
def clients(tls: TlsSimulators, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], replicate.Client]]:
    """Make SDK clients (by token) for the simulator; they poll every 20 ms instead of 500 ms."""
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.02")
    transports: list[httpx.HTTPTransport] = []

    def make(token: str) -> replicate.Client:
        # Our own transport (the SDK wraps it in its retry logic), so the test can close what it opened.
        transports.append(httpx.HTTPTransport(verify=tls.ssl_context))
        return replicate.Client(api_token=token, base_url=tls.sims.replicate_url, transport=transports[-1])

    yield make
    for transport in transports:
        transport.close()


@pytest.fixture
def client(tls: TlsSimulators, clients: Callable[[str], replicate.Client]) -> replicate.Client:
    """An SDK client with the simulator's token."""
    return clients(tls.sims.replicate_key)


@pytest.fixture
def control(tls: TlsSimulators, tls_http: httpx.Client) -> Any:
    """POST to the Replicate simulator's /_sim routes: control("config", {...})."""

    def post(route: str, body: dict[str, Any]) -> dict[str, Any]:
        response = tls_http.post(f"{tls.sims.replicate_url}/_sim/{route}", json=body)
        response.raise_for_status()
        return response.json()

    return post


def stats(tls: TlsSimulators, tls_http: httpx.Client) -> dict[str, Any]:
    return tls_http.get(f"{tls.sims.replicate_url}/_sim/stats").json()


def test_run_returns_file_output_with_the_image(client: replicate.Client) -> None:
    output = client.run(MODEL, input={"prompt": "a teapot", "aspect_ratio": "16:9", "output_format": "png"})
    [file] = output
    assert isinstance(file, FileOutput)
    with Image.open(io.BytesIO(file.read())) as picture:
        assert (picture.format, picture.size) == ("PNG", (1360, 768))


def test_run_polls_when_the_blocking_create_times_out(
    client: replicate.Client, control: Any, tls: TlsSimulators, tls_http: httpx.Client
) -> None:
    # The wait window is 1 s but the prediction takes 1.2 s: run() gets `starting` and must poll.
    control("config", {"queue_ms": 200, "run_ms": 1000})
    [file] = client.run(MODEL, input={"prompt": "slow"}, wait=1)
    with Image.open(io.BytesIO(file.read())) as picture:
        assert (picture.format, picture.size) == ("JPEG", (1024, 1024))
    assert stats(tls, tls_http)["calls"]["get"] >= 1


def test_create_then_wait(client: replicate.Client, control: Any) -> None:
    control("config", {"queue_ms": 50, "run_ms": 100})
    prediction = client.models.predictions.create(model=MODEL, input={"prompt": "later", "output_megapixels": "2"})
    assert prediction.status == "starting"
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.metrics is not None and prediction.metrics["predict_time"] > 0
    assert isinstance(prediction.output, list) and prediction.output[0].endswith("/0.jpg")


def test_cancel(client: replicate.Client, control: Any, tls: TlsSimulators, tls_http: httpx.Client) -> None:
    control("config", {"queue_ms": 5000})
    prediction = client.models.predictions.create(model=MODEL, input={"prompt": "never"})
    prediction.cancel()
    prediction.reload()
    assert prediction.status == "canceled"
    assert client.predictions.get(prediction.id).status == "canceled"
    assert stats(tls, tls_http)["cancels"] == 1


def test_bad_token_raises_replicate_error(clients: Callable[[str], replicate.Client]) -> None:
    bad = clients("not-the-token")
    with pytest.raises(ReplicateError) as raised:
        bad.run(MODEL, input={"prompt": "x"})
    assert raised.value.status == 401
    assert raised.value.title == "Unauthenticated"
    assert "not-the-token" not in str(raised.value)


def test_invalid_input_raises_replicate_error(client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as raised:
        client.run(MODEL, input={"prompt": "x", "output_format": "jpeg"})
    assert raised.value.status == 422
    assert raised.value.title == "Input validation failed"
    assert "output_format" in (raised.value.detail or "")


def test_nsfw_raises_model_error(client: replicate.Client, control: Any) -> None:
    control("faults", {"kind": "nsfw", "on": "create", "times": 1})
    with pytest.raises(ModelError) as raised:
        client.run(MODEL, input={"prompt": "x"})
    assert raised.value.prediction.error is not None and "NSFW" in raised.value.prediction.error


def test_429_on_create_reaches_the_caller(client: replicate.Client, control: Any) -> None:
    # replicate-python never retries POST, so a throttled create is the adapter's problem.
    control("faults", {"kind": "http_429", "on": "create", "times": 1})
    with pytest.raises(ReplicateError) as raised:
        client.models.predictions.create(model=MODEL, input={"prompt": "x"})
    assert raised.value.status == 429


def test_sdk_retries_a_503_on_get(
    client: replicate.Client, control: Any, tls: TlsSimulators, tls_http: httpx.Client
) -> None:
    prediction = client.models.predictions.create(model=MODEL, input={"prompt": "x"})
    control("faults", {"kind": "http_503", "on": "get", "times": 1})
    started = time.monotonic()
    assert client.predictions.get(prediction.id).id == prediction.id
    assert time.monotonic() - started < 5
    assert stats(tls, tls_http)["calls"]["get"] == 2
