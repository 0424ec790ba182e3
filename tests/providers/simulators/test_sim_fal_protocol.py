"""The fal queue simulator over real HTTP: URLs, status codes and bodies, validation, cancel, auth, files."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from providers.simulators.server import SimulatorThread

T2I = "/fal-ai/flux-2/klein/4b"
EDIT = "/fal-ai/flux-2/klein/4b/edit"


def submit(client: httpx.Client, body: dict[str, Any], endpoint: str = T2I) -> dict[str, Any]:
    response = client.post(endpoint, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def wait_completed(client: httpx.Client, handle: dict[str, Any], timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(handle["status_url"])
        if response.json()["status"] == "COMPLETED":
            return response
        time.sleep(0.01)
    raise AssertionError("job did not complete")


def test_submit_answers_the_four_urls_in_owner_app_form(sims: SimulatorThread, fal_http: httpx.Client) -> None:
    response = fal_http.post(T2I, json={"prompt": "a red fox"})
    body = response.json()
    assert response.status_code == 200
    assert response.headers["x-fal-request-id"] == body["request_id"]
    assert body["status"] == "IN_QUEUE"
    assert body["queue_position"] == 0
    base = f"{sims.fal_url}/fal-ai/flux-2/requests/{body['request_id']}"
    assert body["response_url"] == base
    assert body["status_url"] == f"{base}/status"
    assert body["cancel_url"] == f"{base}/cancel"


def test_status_goes_queued_then_in_progress_then_completed(fal_http: httpx.Client) -> None:
    fal_http.post("/_sim/config", json={"queue_ms": 300, "run_ms": 300}).raise_for_status()
    handle = submit(fal_http, {"prompt": "slow"})

    queued = fal_http.get(handle["status_url"], params={"logs": "1"})
    assert queued.status_code == 202
    assert queued.json()["status"] == "IN_QUEUE"
    assert isinstance(queued.json()["queue_position"], int)
    assert queued.json()["response_url"] == handle["response_url"]

    time.sleep(0.35)
    running = fal_http.get(handle["status_url"], params={"logs": "0"})
    assert running.status_code == 202
    assert running.json()["status"] == "IN_PROGRESS"
    assert running.json()["logs"] == []
    assert fal_http.get(handle["status_url"], params={"logs": "true"}).json()["logs"][0]["source"] == "USER"
    early = fal_http.get(handle["response_url"])
    assert (early.status_code, early.json()) == (400, {"detail": "Request is still in progress"})

    time.sleep(0.3)
    done = fal_http.get(handle["status_url"], params={"logs": "false"})
    assert done.status_code == 200
    assert done.json()["status"] == "COMPLETED"
    assert done.json()["logs"] is None
    assert done.json()["metrics"]["inference_time"] == pytest.approx(0.3)
    assert "error" not in done.json()
    logs = fal_http.get(handle["status_url"], params={"logs": "1"}).json()["logs"]
    assert [entry["level"] for entry in logs] == ["INFO", "INFO"]


def test_result_is_v4_output_and_files_are_real_images(http: httpx.Client, fal_http: httpx.Client) -> None:
    body = {"prompt": "two cats", "image_size": {"width": 320, "height": 192}, "num_images": 2, "seed": 7}
    handle = submit(fal_http, {**body, "output_format": "webp"})
    wait_completed(fal_http, handle)
    result = fal_http.get(handle["response_url"])
    assert result.status_code == 200
    output = result.json()
    assert output["seed"] == 7
    assert output["prompt"] == "two cats"
    assert output["has_nsfw_concepts"] == [False, False]
    assert set(output["timings"]) == {"inference"}
    pictures = []
    for image in output["images"]:
        assert (image["width"], image["height"], image["content_type"]) == (320, 192, "image/webp")
        file = http.get(image["url"])  # no auth header: files are public, like fal's CDN
        assert file.headers["content-type"] == "image/webp"
        with Image.open(io.BytesIO(file.content)) as picture:
            assert (picture.format, picture.size) == ("WEBP", (320, 192))
        pictures.append(file.content)
    assert pictures[0] != pictures[1]


@pytest.mark.parametrize(
    ("image_size", "expected"),
    [(None, (1024, 768)), ("square", (512, 512)), ("portrait_16_9", (576, 1024)), ({"width": 100}, (100, 512))],
)
def test_image_size_presets_and_defaults(
    http: httpx.Client, fal_http: httpx.Client, image_size: Any, expected: tuple[int, int]
) -> None:
    body: dict[str, Any] = {"prompt": "size", "output_format": "jpeg"}
    if image_size is not None:
        body["image_size"] = image_size
    handle = submit(fal_http, body)
    wait_completed(fal_http, handle)
    image = fal_http.get(handle["response_url"]).json()["images"][0]
    assert (image["width"], image["height"]) == expected
    with Image.open(io.BytesIO(http.get(image["url"]).content)) as picture:
        assert (picture.format, picture.size) == ("JPEG", expected)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_files_serve_each_format_by_extension(http: httpx.Client, fal_http: httpx.Client, fmt: str) -> None:
    handle = submit(fal_http, {"prompt": "fmt", "image_size": "square", "output_format": "png"})
    wait_completed(fal_http, handle)
    url = fal_http.get(handle["response_url"]).json()["images"][0]["url"].rsplit(".", 1)[0] + f".{fmt}"
    file = http.get(url)
    assert file.headers["content-type"] == f"image/{fmt}"
    with Image.open(io.BytesIO(file.content)) as picture:
        assert picture.format == fmt.upper()
    assert http.get(url.replace("/0.", "/1.")).status_code == 404  # num_images was 1


def test_generated_pictures_are_deterministic_in_seed_and_prompt(http: httpx.Client, fal_http: httpx.Client) -> None:
    contents = []
    for prompt in ("same", "same", "different"):
        handle = submit(fal_http, {"prompt": prompt, "seed": 42, "image_size": "square"})
        wait_completed(fal_http, handle)
        contents.append(http.get(fal_http.get(handle["response_url"]).json()["images"][0]["url"]).content)
    assert contents[0] == contents[1] != contents[2]


def test_sync_mode_returns_data_uris(fal_http: httpx.Client) -> None:
    handle = submit(fal_http, {"prompt": "inline", "image_size": "square", "sync_mode": True})
    wait_completed(fal_http, handle)
    url = fal_http.get(handle["response_url"]).json()["images"][0]["url"]
    assert url.startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({}, ["body", "prompt"], "missing"),
        ({"prompt": ""}, ["body", "prompt"], "string_too_short"),
        ({"prompt": "x", "num_images": 5}, ["body", "num_images"], "less_than_equal"),
        ({"prompt": "x", "num_images": 0}, ["body", "num_images"], "greater_than_equal"),
        ({"prompt": "x", "output_format": "jpg"}, ["body", "output_format"], "literal_error"),
        ({"prompt": "x", "seed": "7"}, ["body", "seed"], "int_type"),
        (
            {"prompt": "x", "image_size": {"width": 4096, "height": 512}},
            ["body", "image_size", "width"],
            "less_than_equal",
        ),
        (
            {"prompt": "x", "image_size": {"width": 512, "height": 32}},
            ["body", "image_size", "height"],
            "greater_than_equal",
        ),
        ({"prompt": "x", "image_size": "huge"}, ["body", "image_size"], "literal_error"),
        ({"prompt": "x", "sync_mode": "yes"}, ["body", "sync_mode"], "bool_type"),
    ],
)
def test_invalid_input_is_accepted_at_submit_and_422_at_result(
    fal_http: httpx.Client, body: dict[str, Any], loc: list[str], kind: str
) -> None:
    handle = submit(fal_http, body)
    completed = wait_completed(fal_http, handle)
    assert "error" not in completed.json()
    result = fal_http.get(handle["response_url"])
    assert result.status_code == 422
    [error] = result.json()["detail"]
    assert (error["loc"], error["type"]) == (loc, kind)
    assert error["msg"]


def test_body_that_is_not_an_object_is_422_at_submit(fal_http: httpx.Client) -> None:
    response = fal_http.post(T2I, content=b"[1, 2]", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "dict_type"


def test_edit_bands_show_every_input_image_in_order(http: httpx.Client, fal_http: httpx.Client, data_uri: Any) -> None:
    colors = [(220, 30, 30), (30, 200, 40), (20, 40, 230)]
    images = [data_uri(color) for color in colors]
    body = {"prompt": "combine", "image_urls": images, "image_size": {"width": 600, "height": 200}}
    handle = submit(fal_http, body, EDIT)
    wait_completed(fal_http, handle)
    output = fal_http.get(handle["response_url"]).json()
    with Image.open(io.BytesIO(http.get(output["images"][0]["url"]).content)) as picture:
        rgb = picture.convert("RGB")
        for index, color in enumerate(colors):
            pixel = rgb.getpixel(((2 * index + 1) * 600 // 6, 100))
            assert max(abs(a - b) for a, b in zip(pixel, color, strict=True)) <= 3, (index, pixel)


def test_edit_without_image_size_uses_the_first_input_size(fal_http: httpx.Client, data_uri: Any) -> None:
    body = {"prompt": "keep size", "image_urls": [data_uri((1, 2, 3), (200, 120)), data_uri((9, 9, 9), (50, 50))]}
    handle = submit(fal_http, body, EDIT)
    wait_completed(fal_http, handle)
    image = fal_http.get(handle["response_url"]).json()["images"][0]
    assert (image["width"], image["height"]) == (200, 120)


@pytest.mark.parametrize(
    ("image_urls", "loc", "kind", "words"),
    [
        (None, ["body", "image_urls"], "missing", "required"),
        ([], ["body", "image_urls"], "too_short", "at least 1"),
        (["https://example.com/cat.png"], ["body", "image_urls", 0], "value_error", "data: URIs"),
        (["data:image/png;base64,bm90IGFuIGltYWdl"], ["body", "image_urls", 0], "value_error", "readable image"),
        (["data:image/png;base64,@@@"], ["body", "image_urls", 0], "value_error", "base64"),
    ],
)
def test_edit_image_url_errors(
    fal_http: httpx.Client, image_urls: list[str] | None, loc: list[Any], kind: str, words: str
) -> None:
    body: dict[str, Any] = {"prompt": "edit"}
    if image_urls is not None:
        body["image_urls"] = image_urls
    handle = submit(fal_http, body, EDIT)
    wait_completed(fal_http, handle)
    result = fal_http.get(handle["response_url"])
    assert result.status_code == 422
    [error] = result.json()["detail"]
    assert (error["loc"], error["type"]) == (loc, kind)
    assert words in error["msg"]


def test_edit_takes_at_most_four_images(fal_http: httpx.Client, data_uri: Any) -> None:
    handle = submit(fal_http, {"prompt": "many", "image_urls": [data_uri((0, 0, 0))] * 5}, EDIT)
    wait_completed(fal_http, handle)
    assert fal_http.get(handle["response_url"]).json()["detail"][0]["type"] == "too_long"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fal-ai/flux-2/klein/4b/requests/{id}/status"),
        ("GET", "/fal-ai/flux-2/klein/4b/requests/{id}"),
        ("PUT", "/fal-ai/flux-2/klein/4b/requests/{id}/cancel"),
        ("GET", "/fal-ai/other-app/requests/{id}/status"),
        ("GET", "/fal-ai/flux-2/requests/{id}/cancel"),
    ],
)
def test_long_form_and_foreign_request_urls_are_404(fal_http: httpx.Client, method: str, path: str) -> None:
    request_id = submit(fal_http, {"prompt": "x"})["request_id"]
    response = fal_http.request(method, path.format(id=request_id))
    assert response.status_code == 404


def test_unknown_request_and_unknown_app(fal_http: httpx.Client) -> None:
    assert fal_http.get("/fal-ai/flux-2/requests/nope/status").status_code == 404
    assert fal_http.get("/fal-ai/flux-2/requests/nope").status_code == 404
    response = fal_http.post("/fal-ai/flux-2/klein/9b", json={"prompt": "x"})
    assert response.status_code == 404


def test_cancel_while_queued_then_again_then_after_completion(fal_http: httpx.Client) -> None:
    fal_http.post("/_sim/config", json={"queue_ms": 5000}).raise_for_status()
    queued = submit(fal_http, {"prompt": "cancel me"})
    response = fal_http.put(queued["cancel_url"])
    assert (response.status_code, response.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    status = fal_http.get(queued["status_url"])
    assert status.status_code == 200
    assert status.json()["status"] == "COMPLETED"  # fal has no CANCELLED status (see fal.py)
    assert status.json()["error_type"] == "request_cancelled"
    assert fal_http.get(queued["response_url"]).status_code == 400
    assert fal_http.put(queued["cancel_url"]).status_code == 202  # idempotent

    fal_http.post("/_sim/config", json={"queue_ms": 0}).raise_for_status()
    done = submit(fal_http, {"prompt": "finished"})
    wait_completed(fal_http, done)
    response = fal_http.put(done["cancel_url"])
    assert (response.status_code, response.json()) == (400, {"status": "ALREADY_COMPLETED"})
    response = fal_http.put("/fal-ai/flux-2/requests/unknown-id/cancel")
    assert (response.status_code, response.json()) == (404, {"status": "NOT_FOUND"})

    stats = fal_http.get("/_sim/stats").json()
    assert stats["cancels"] == 1
    assert [job["status"] for job in stats["jobs"]] == ["CANCELLED", "COMPLETED"]


def test_cancel_while_in_progress(fal_http: httpx.Client) -> None:
    fal_http.post("/_sim/config", json={"queue_ms": 0, "run_ms": 5000}).raise_for_status()
    handle = submit(fal_http, {"prompt": "running"})
    assert fal_http.get(handle["status_url"]).json()["status"] == "IN_PROGRESS"
    assert fal_http.put(handle["cancel_url"]).status_code == 202
    assert fal_http.get(handle["status_url"]).json()["status"] == "COMPLETED"
    assert fal_http.get("/_sim/stats").json()["cancels"] == 1


@pytest.mark.parametrize(
    "authorization",
    [None, "Key wrong-key-abc123", "Bearer {key}", "{key}", "Key"],
    ids=["none", "wrong", "bearer", "bare", "empty"],
)
def test_auth_failures_are_401_without_echoing_the_key(
    http: httpx.Client, sims: SimulatorThread, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization.format(key=sims.fal_key)}
    for method, path in [
        ("POST", T2I),
        ("GET", "/fal-ai/flux-2/requests/x/status"),
        ("PUT", "/fal-ai/flux-2/requests/x/cancel"),
    ]:
        response = http.request(method, sims.fal_url + path, headers=headers, json={"prompt": "x"})
        assert response.status_code == 401
        assert isinstance(response.json()["detail"], str)
        assert "wrong-key-abc123" not in response.text
        assert sims.fal_key not in response.text


def test_public_url_comes_from_the_host_header(sims: SimulatorThread, fal_http: httpx.Client) -> None:
    response = fal_http.post(T2I, json={"prompt": "x"}, headers={"Host": "queue.example.test:8443"})
    assert response.json()["status_url"].startswith("http://queue.example.test:8443/fal-ai/flux-2/requests/")
