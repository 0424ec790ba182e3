"""Every fault kind, on each simulator, as a client sees it over HTTP."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from providers.simulators.server import SimulatorThread

T2I = "/fal-ai/flux-2/klein/4b"
CREATE = "/v1/models/black-forest-labs/flux-2-klein-4b/predictions"


def add_fault(client: httpx.Client, kind: str, on: str = "any", times: int | None = 1, **extra: Any) -> None:
    client.post("/_sim/faults", json={"kind": kind, "on": on, "times": times, **extra}).raise_for_status()


def fal_submit(client: httpx.Client, **values: Any) -> dict[str, Any]:
    response = client.post(T2I, json={"prompt": "fault", "image_size": "square", **values})
    assert response.status_code == 200, response.text
    return response.json()


def fal_completed(client: httpx.Client, handle: dict[str, Any]) -> httpx.Response:
    for _ in range(500):
        status = client.get(handle["status_url"])
        if status.json()["status"] == "COMPLETED":
            return status
        time.sleep(0.01)
    raise AssertionError("job did not complete")


# --- fal ------------------------------------------------------------------------------------------------


def test_fal_http_500_carries_a_request_id(fal_http: httpx.Client) -> None:
    add_fault(fal_http, "http_500", "submit")
    response = fal_http.post(T2I, json={"prompt": "x"})
    assert response.status_code == 500
    assert response.headers["x-fal-request-id"]
    assert isinstance(response.json()["detail"], str)
    assert fal_http.post(T2I, json={"prompt": "x"}).status_code == 200  # times=1: used up


def test_fal_http_503_looks_like_an_nginx_ingress_error(fal_http: httpx.Client) -> None:
    handle = fal_submit(fal_http)
    add_fault(fal_http, "http_503", "status")
    response = fal_http.get(handle["status_url"])
    assert response.status_code == 503
    assert "nginx" in response.text  # fal_client retries these: no request id, nginx body
    assert "x-fal-request-id" not in response.headers


def test_fal_http_429_has_retry_after(fal_http: httpx.Client) -> None:
    add_fault(fal_http, "http_429", "submit", retry_after=2)
    response = fal_http.post(T2I, json={"prompt": "x"})
    assert (response.status_code, response.headers["retry-after"]) == (429, "2")


def test_fal_hang_never_answers_until_the_client_gives_up(fal_http: httpx.Client) -> None:
    handle = fal_submit(fal_http)
    add_fault(fal_http, "hang", "status")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        fal_http.get(handle["status_url"], timeout=0.3)
    assert time.monotonic() - started < 1
    assert fal_http.get(handle["status_url"]).status_code in (200, 202)  # the next call is normal


def test_fal_malformed_result_and_file(http: httpx.Client, fal_http: httpx.Client) -> None:
    handle = fal_submit(fal_http)
    fal_completed(fal_http, handle)
    add_fault(fal_http, "malformed", "result")
    response = fal_http.get(handle["response_url"])
    assert response.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)
    url = fal_http.get(handle["response_url"]).json()["images"][0]["url"]
    add_fault(fal_http, "malformed", "file")
    file = http.get(url)
    assert file.status_code == 200
    with pytest.raises(OSError):
        Image.open(io.BytesIO(file.content))


def test_fal_validation_fault_surfaces_at_result(fal_http: httpx.Client) -> None:
    add_fault(fal_http, "validation", "submit")
    handle = fal_submit(fal_http)
    assert "error" not in fal_completed(fal_http, handle).json()
    result = fal_http.get(handle["response_url"])
    assert result.status_code == 422
    assert result.json()["detail"][0]["loc"][0] == "body"


def test_fal_model_error_completes_with_an_error_and_result_500(
    sims: SimulatorThread, http: httpx.Client, fal_http: httpx.Client
) -> None:
    add_fault(fal_http, "model_error", "submit")
    handle = fal_submit(fal_http)
    status = fal_completed(fal_http, handle).json()
    assert status["error"] and status["error_type"]
    result = fal_http.get(handle["response_url"])
    assert result.status_code == 500
    assert result.headers["x-fal-request-id"] == handle["request_id"]
    assert http.get(f"{sims.fal_url}/files/{handle['request_id']}/0.png").status_code == 404


def test_fal_nsfw_returns_flagged_black_images(http: httpx.Client, fal_http: httpx.Client) -> None:
    add_fault(fal_http, "nsfw", "submit")
    handle = fal_submit(fal_http, num_images=2)
    fal_completed(fal_http, handle)
    output = fal_http.get(handle["response_url"]).json()
    assert output["has_nsfw_concepts"] == [True, True]
    for image in output["images"]:
        with Image.open(io.BytesIO(http.get(image["url"]).content)) as picture:
            assert picture.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))


def test_fal_stuck_job_stays_in_queue_until_cancelled(fal_http: httpx.Client) -> None:
    add_fault(fal_http, "stuck", "submit")
    handle = fal_submit(fal_http)
    time.sleep(0.1)  # well past queue_ms + run_ms
    status = fal_http.get(handle["status_url"])
    assert (status.status_code, status.json()["status"]) == (202, "IN_QUEUE")
    assert "queue_position" in status.json()
    assert fal_http.put(handle["cancel_url"]).status_code == 202
    assert fal_http.get("/_sim/stats").json()["cancels"] == 1


# --- Replicate ------------------------------------------------------------------------------------------


def replicate_create(client: httpx.Client, prefer: str | None = "wait") -> httpx.Response:
    return client.post(CREATE, json={"input": {"prompt": "fault"}}, headers={"Prefer": prefer} if prefer else {})


@pytest.mark.parametrize(("kind", "status"), [("http_500", 500), ("http_503", 503)])
def test_replicate_5xx_are_problem_json(replicate_http: httpx.Client, kind: str, status: int) -> None:
    add_fault(replicate_http, kind, "create")
    response = replicate_create(replicate_http)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


@pytest.mark.parametrize(("seconds", "words"), [(1, "1 second."), (3, "3 seconds.")])
def test_replicate_429_is_throttled_with_retry_after(replicate_http: httpx.Client, seconds: int, words: str) -> None:
    add_fault(replicate_http, "http_429", "create", retry_after=seconds)
    response = replicate_create(replicate_http)
    assert response.status_code == 429
    assert response.headers["retry-after"] == str(seconds)
    assert response.json() == {"detail": f"Request was throttled. Expected available in {words}"}


def test_replicate_hang_on_get(replicate_http: httpx.Client) -> None:
    prediction = replicate_create(replicate_http).json()
    add_fault(replicate_http, "hang", "get")
    with pytest.raises(httpx.ReadTimeout):
        replicate_http.get(prediction["urls"]["get"], timeout=0.3)
    assert replicate_http.get(prediction["urls"]["get"]).json()["status"] == "succeeded"


def test_replicate_malformed_create(replicate_http: httpx.Client) -> None:
    add_fault(replicate_http, "malformed", "create")
    response = replicate_create(replicate_http)
    assert response.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


def test_replicate_validation_fault_is_a_422_at_create(replicate_http: httpx.Client) -> None:
    add_fault(replicate_http, "validation", "create")
    response = replicate_create(replicate_http)
    assert response.status_code == 422
    assert response.json()["title"] == "Input validation failed"
    assert response.json()["invalid_fields"]


@pytest.mark.parametrize(("kind", "words"), [("model_error", "Prediction failed"), ("nsfw", "NSFW content detected")])
def test_replicate_failed_predictions(
    sims: SimulatorThread, http: httpx.Client, replicate_http: httpx.Client, kind: str, words: str
) -> None:
    add_fault(replicate_http, kind, "create")
    prediction = replicate_create(replicate_http).json()
    assert (prediction["status"], prediction["output"]) == ("failed", None)
    assert words in prediction["error"]
    assert http.get(f"{sims.replicate_url}/files/{prediction['id']}/0.jpg").status_code == 404
    assert replicate_http.get("/_sim/stats").json()["jobs"][0]["fault"] == kind


def test_replicate_stuck_prediction_stays_starting(replicate_http: httpx.Client) -> None:
    add_fault(replicate_http, "stuck", "create")
    prediction = replicate_create(replicate_http, prefer=None).json()
    time.sleep(0.1)
    assert replicate_http.get(prediction["urls"]["get"]).json()["status"] == "starting"
    cancelled = replicate_http.post(prediction["urls"]["cancel"]).json()
    assert (cancelled["status"], cancelled["started_at"]) == ("canceled", None)


def test_file_faults_need_no_auth_either(
    sims: SimulatorThread, http: httpx.Client, replicate_http: httpx.Client
) -> None:
    prediction = replicate_create(replicate_http).json()
    add_fault(replicate_http, "http_500", "file")
    assert http.get(prediction["output"][0]).status_code == 500
    assert http.get(prediction["output"][0]).status_code == 200
