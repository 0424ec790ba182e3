"""Conformance: the official `fal-client` SDK drives the fal simulator unmodified.

fal_client hard-codes https://, so the simulator is served over TLS with a throwaway CA (trusted through
SSL_CERT_FILE, which httpx reads per client) and the SDK's queue/run URL prefixes are patched to it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import fal_client
import fal_client.client
import httpx
import pytest
from PIL import Image

if TYPE_CHECKING:  # fixtures' types; conftest modules are not importable at run time
    from conftest import TlsSimulators

T2I = "fal-ai/flux-2/klein/4b"
EDIT = "fal-ai/flux-2/klein/4b/edit"


@pytest.fixture
def fal_clients(
    tls: TlsSimulators, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], fal_client.SyncClient]]:
    """Make fal_client SyncClients (by key) whose queue host is the simulator; closes them afterwards."""
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{tls.sims.fal_url}/")
    monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", f"{tls.sims.fal_url}/")
    made: list[fal_client.SyncClient] = []

    def make(key: str) -> fal_client.SyncClient:
        made.append(fal_client.SyncClient(key=key))
        return made[-1]

    yield make
    for client in made:
        # SyncClient has no close(); its httpx client is a cached property, created on first use.
        if "_client" in vars(client):
            client._client.close()


@pytest.fixture
def fal(tls: TlsSimulators, fal_clients: Callable[[str], fal_client.SyncClient]) -> fal_client.SyncClient:
    """A fal_client SyncClient with the simulator's key."""
    return fal_clients(tls.sims.fal_key)


@pytest.fixture
def control(tls: TlsSimulators, tls_http: httpx.Client) -> Any:
    """Call the fal simulator's /_sim routes: control("GET", "stats") or control("POST", "faults", {...})."""

    def call(method: str, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = tls_http.request(method, f"{tls.sims.fal_url}/_sim/{route}", json=body)
        response.raise_for_status()
        return response.json()

    return call


def download(tls_http: httpx.Client, url: str) -> Image.Image:
    response = tls_http.get(url)
    response.raise_for_status()
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_subscribe_completes_and_the_image_is_real(fal: fal_client.SyncClient, tls_http: httpx.Client) -> None:
    updates: list[Any] = []
    arguments = {"prompt": "a harbour", "image_size": {"width": 640, "height": 384}, "output_format": "jpeg"}
    result = fal.subscribe(T2I, arguments=arguments, with_logs=True, on_queue_update=updates.append, interval=0.01)
    assert isinstance(updates[-1], fal_client.Completed)
    [image] = result["images"]
    assert (image["width"], image["height"], image["content_type"]) == (640, 384, "image/jpeg")
    picture = download(tls_http, image["url"])
    assert (picture.format, picture.size) == ("JPEG", (640, 384))


def test_submit_status_result(fal: fal_client.SyncClient, control: Any) -> None:
    control("POST", "config", {"queue_ms": 100, "run_ms": 100})
    handle = fal.submit(T2I, arguments={"prompt": "step by step", "num_images": 2})
    assert isinstance(handle.status(), fal_client.Queued)
    time.sleep(0.12)
    in_progress = handle.status(with_logs=True)
    assert isinstance(in_progress, fal_client.InProgress)
    assert in_progress.logs
    time.sleep(0.1)
    completed = handle.status(with_logs=True)
    assert isinstance(completed, fal_client.Completed)
    assert completed.metrics["inference_time"] == pytest.approx(0.1)
    assert len(handle.get()["images"]) == 2
    assert len(fal.result(T2I, handle.request_id)["images"]) == 2  # rebuilt owner/app URLs work too


def test_edit_round_trip(fal: fal_client.SyncClient, tls_http: httpx.Client, data_uri: Any) -> None:
    colors = [(200, 0, 0), (0, 0, 200)]
    arguments = {"prompt": "merge", "image_urls": [data_uri(c, (96, 72)) for c in colors], "output_format": "png"}
    result = fal.subscribe(EDIT, arguments=arguments, interval=0.01)
    picture = download(tls_http, result["images"][0]["url"]).convert("RGB")
    assert picture.size == (96, 72)  # no image_size: the first input's size
    assert [picture.getpixel((x, 36)) for x in (24, 72)] == colors


def test_cancel(fal: fal_client.SyncClient, control: Any) -> None:
    control("POST", "config", {"queue_ms": 5000})
    handle = fal.submit(T2I, arguments={"prompt": "never mind"})
    handle.cancel()
    status = handle.status()
    assert isinstance(status, fal_client.Completed)
    assert status.error is not None
    with pytest.raises(fal_client.client.FalClientHTTPError):
        handle.get()
    assert control("GET", "stats")["cancels"] == 1


def test_validation_error_raises_from_the_result(fal: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        fal.subscribe(T2I, arguments={"prompt": "x", "num_images": 9}, interval=0.01)
    assert raised.value.status_code == 422
    assert raised.value.message[0]["loc"] == ["body", "num_images"]  # FastAPI-style detail list


def test_bad_key_raises(fal_clients: Callable[[str], fal_client.SyncClient]) -> None:
    wrong = fal_clients("definitely-wrong")
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        wrong.submit(T2I, arguments={"prompt": "x"})
    assert raised.value.status_code == 401
    assert "definitely-wrong" not in str(raised.value)


def test_model_error_is_not_retried(fal: fal_client.SyncClient, control: Any) -> None:
    control("POST", "faults", {"kind": "model_error", "on": "submit", "times": 1})
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        fal.subscribe(T2I, arguments={"prompt": "x"}, interval=0.01)
    assert raised.value.status_code == 500
    assert control("GET", "stats")["calls"]["result"] == 1


def test_sdk_retries_ingress_503_and_429(fal: fal_client.SyncClient, control: Any) -> None:
    control("POST", "faults", {"kind": "http_503", "on": "submit", "times": 1})
    control("POST", "faults", {"kind": "http_429", "on": "status", "times": 1, "retry_after": 0})
    result = fal.subscribe(T2I, arguments={"prompt": "x"}, interval=0.01)
    assert result["images"]
    calls = control("GET", "stats")["calls"]
    assert calls["submit"] == 2
    assert calls["status"] >= 2


async def test_async_client_subscribe(tls: TlsSimulators, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{tls.sims.fal_url}/")
    client = fal_client.AsyncClient(key=tls.sims.fal_key)
    try:
        result = await client.subscribe(T2I, arguments={"prompt": "async", "image_size": "square"}, interval=0.01)
    finally:
        # AsyncClient has no aclose(); its httpx client is an awaitable cached property.
        await (await client._client).aclose()
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (512, 512)
