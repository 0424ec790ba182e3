"""Bad input, bad keys and failing providers all get clean OpenAI-style errors; nothing is billed for bad input."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import FAL_KEY, REPLICATE_KEY, Gateway, Simulators, UsageLog, solid_png

GOOD = {"model": "flux.2-klein-4b", "prompt": "a fox"}
GEN = "/v1/images/generations"
EDIT = "/v1/images/edits"
PNG = solid_png((10, 10, 10))

# (name, path, request kwargs for httpx, status, type, param, code)
BAD_INPUTS: list[tuple[str, str, dict[str, Any], int, str, str | None, str | None]] = [
    (
        "malformed json",
        GEN,
        {"content": b'{"model": "flux'},
        400,
        "invalid_request_error",
        None,
        None,
    ),
    ("json array", GEN, {"json": ["model"]}, 400, "invalid_request_error", None, None),
    ("missing prompt", GEN, {"json": {"model": "flux.2-klein-4b"}}, 400, "invalid_request_error", "prompt", None),
    ("empty prompt", GEN, {"json": {**GOOD, "prompt": "  "}}, 400, "invalid_request_error", "prompt", None),
    ("missing model", GEN, {"json": {"prompt": "x"}}, 400, "invalid_request_error", "model", None),
    (
        "unknown model",
        GEN,
        {"json": {**GOOD, "model": "dall-e-3"}},
        404,
        "invalid_request_error",
        "model",
        "model_not_found",
    ),
    (
        "unknown pinned provider",
        GEN,
        {"json": {**GOOD, "model": "openai/flux.2-klein-4b"}},
        404,
        "invalid_request_error",
        "model",
        "model_not_found",
    ),
    ("n zero", GEN, {"json": {**GOOD, "n": 0}}, 400, "invalid_request_error", "n", None),
    ("n five", GEN, {"json": {**GOOD, "n": 5}}, 400, "invalid_request_error", "n", None),
    ("n not a number", GEN, {"json": {**GOOD, "n": "lots"}}, 400, "invalid_request_error", "n", None),
    ("size garbage", GEN, {"json": {**GOOD, "size": "huge"}}, 400, "invalid_request_error", "size", None),
    ("size too big", GEN, {"json": {**GOOD, "size": "4096x4096"}}, 400, "invalid_request_error", "size", None),
    ("size too small", GEN, {"json": {**GOOD, "size": "32x32"}}, 400, "invalid_request_error", "size", None),
    (
        "size no pinned deployment makes",
        GEN,
        {"json": {**GOOD, "model": "replicate/flux.2-klein-4b", "size": "1000x1000"}},
        400,
        "invalid_request_error",
        "size",
        None,
    ),
    (
        "bad response_format",
        GEN,
        {"json": {**GOOD, "response_format": "base64"}},
        400,
        "invalid_request_error",
        "response_format",
        None,
    ),
    (
        "bad output_format",
        GEN,
        {"json": {**GOOD, "output_format": "gif"}},
        400,
        "invalid_request_error",
        "output_format",
        None,
    ),
    ("streaming", GEN, {"json": {**GOOD, "stream": True}}, 400, "invalid_request_error", "stream", None),
    ("body too large", GEN, {"json": {**GOOD, "prompt": "x" * 2_000_000}}, 413, "invalid_request_error", None, None),
    ("edit as json", EDIT, {"json": GOOD}, 400, "invalid_request_error", None, None),
    (
        "edit without image",
        EDIT,
        {"data": GOOD, "files": {"other": ("a.txt", b"hi")}},
        400,
        "invalid_request_error",
        "image",
        None,
    ),
    (
        "edit image not an image",
        EDIT,
        {"data": GOOD, "files": {"image": ("a.png", b"not a png")}},
        400,
        "invalid_request_error",
        "image",
        None,
    ),
    (
        "edit truncated png",
        EDIT,
        {"data": GOOD, "files": {"image": ("a.png", PNG[:50])}},
        400,
        "invalid_request_error",
        "image",
        None,
    ),
    (
        "edit five images",
        EDIT,
        {"data": GOOD, "files": [("image[]", (f"{i}.png", PNG)) for i in range(5)]},
        400,
        "invalid_request_error",
        "image",
        None,
    ),
    (
        "edit with mask",
        EDIT,
        {"data": GOOD, "files": [("image", ("a.png", PNG)), ("mask", ("m.png", PNG))]},
        400,
        "invalid_request_error",
        "mask",
        None,
    ),
    (
        "edit text in image field",
        EDIT,
        {"data": {**GOOD, "image": "http://example.com/x.png"}, "files": {"other": ("a.txt", b"hi")}},
        400,
        "invalid_request_error",
        "image",
        None,
    ),
    (
        "edit unknown model",
        EDIT,
        {"data": {**GOOD, "model": "nope"}, "files": {"image": ("a.png", PNG)}},
        404,
        "invalid_request_error",
        "model",
        "model_not_found",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "kwargs", "status", "error_type", "param", "code"),
    BAD_INPUTS,
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_refused_before_any_provider_call(
    gateway: Gateway,
    sims: Simulators,
    usage: UsageLog,
    name: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    error_type: str,
    param: str | None,
    code: str | None,
) -> None:
    response = httpx.post(f"{gateway.url}{path}", headers={"Authorization": f"Bearer {gateway.key}"}, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["param"] == param
    assert error["code"] == code
    assert len(error["message"]) > 10
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"].startswith("req_")
    assert sims.total_calls() == 0, "no provider may be called for bad input"
    assert usage.since_mark() == [], "nothing may be recorded for bad input"


def test_size_error_names_the_nearest_sizes(gateway: Gateway, sims: Simulators) -> None:
    response = httpx.post(
        f"{gateway.url}{GEN}",
        headers={"Authorization": f"Bearer {gateway.key}"},
        json={**GOOD, "model": "replicate/flux.2-klein-4b", "size": "1920x1080"},
    )
    assert "nearest available: 1936x1088" in response.json()["error"]["message"]


def test_sdk_raises_typed_errors(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="flux.2-klein-4b", prompt="x", size="4096x4096")
    assert info.value.param == "size"
    with pytest.raises(openai.NotFoundError) as not_found:
        client.images.generate(model="gpt-image-1", prompt="x")
    assert not_found.value.code == "model_not_found"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic abc", "Bearer"])
def test_missing_or_wrong_gateway_key_is_401(
    gateway: Gateway, sims: Simulators, usage: UsageLog, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in [("POST", GEN), ("POST", EDIT), ("GET", "/v1/models")]:
        response = httpx.request(method, f"{gateway.url}{path}", headers=headers, json=GOOD)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert "wrong-key" not in response.text
    assert sims.total_calls() == 0
    assert usage.since_mark() == []


def test_sdk_authentication_error(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{gateway.url}/v1", api_key="nope", max_retries=0).models.list()


def _no_secrets(text: str) -> None:
    for secret in (FAL_KEY, REPLICATE_KEY, "Bearer r8_", "Key fal-"):
        assert secret not in text


@pytest.fixture(scope="module")
def misconfigured_gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    """A gateway holding wrong provider keys: the operator's mistake, not the client's."""
    return start_gateway(FAL_KEY="fal-wrong-secret-key", REPLICATE_API_TOKEN="r8_wrong-secret-token")


@pytest.mark.parametrize("model", ["fal/flux.2-klein-4b", "replicate/flux.2-klein-4b"])
def test_provider_auth_failure_is_a_clean_502(misconfigured_gateway: Gateway, sims: Simulators, model: str) -> None:
    response = httpx.post(
        f"{misconfigured_gateway.url}{GEN}",
        headers={"Authorization": f"Bearer {misconfigured_gateway.key}"},
        json={**GOOD, "model": model},
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "provider_auth_error"
    for secret in ("fal-wrong-secret-key", "r8_wrong-secret-token"):
        assert secret not in response.text
        assert secret not in misconfigured_gateway.process.log_text()
    _no_secrets(response.text)


@pytest.mark.parametrize(
    ("provider", "op", "kind", "status", "code"),
    [
        ("replicate", "create", "http_500", 502, "provider_unavailable"),
        ("fal", "submit", "http_500", 502, "provider_unavailable"),
        ("fal", "status", "malformed", 502, "provider_unavailable"),
        ("replicate", "create", "http_429", 503, "provider_rate_limited"),
        ("fal", "any", "nsfw", 400, "content_policy_violation"),
        ("replicate", "any", "nsfw", 400, "content_policy_violation"),
        ("replicate", "create", "validation", 400, "provider_rejected_input"),
    ],
)
def test_provider_failures_are_clean_errors(
    gateway: Gateway, sims: Simulators, usage: UsageLog, provider: str, op: str, kind: str, status: int, code: str
) -> None:
    getattr(sims, provider).fault(kind, on=op, times=1)
    response = httpx.post(
        f"{gateway.url}{GEN}",
        headers={"Authorization": f"Bearer {gateway.key}"},
        json={**GOOD, "model": f"{provider}/flux.2-klein-4b"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}
    _no_secrets(response.text)
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1
    (record,) = usage.since_mark()
    assert record["outcome"] == code
    assert record["billed_micros"] == "0", "a failed request is never billed to the team"
    # True provider spend: none, unless the provider finished the job before our cancel reached it.
    assert record["cost_micros"] == "0" or record["disposition"] == "wasted", record
    _no_secrets(gateway.process.log_text())


@pytest.fixture(scope="module")
def small_upload_gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway(GATEWAY_MAX_UPLOAD_FILE_BYTES="2000", GATEWAY_MAX_UPLOAD_TOTAL_BYTES="5000")


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ([("image", ("big.png", solid_png((1, 2, 3), (300, 300)) + b"\0" * 3000))], "each image"),
        ([("image[]", (f"{i}.png", solid_png((i, 2, 3), (40, 40)) + b"\0" * 1500)) for i in range(4)], "together"),
        ([("image", ("huge.png", b"\0" * 1_200_000))], "limit"),  # over the whole-body cap: refused while streaming
    ],
)
def test_uploads_over_the_caps_are_413(
    small_upload_gateway: Gateway, sims: Simulators, usage: UsageLog, files: list, reason: str
) -> None:
    response = httpx.post(
        f"{small_upload_gateway.url}{EDIT}",
        headers={"Authorization": f"Bearer {small_upload_gateway.key}"},
        data=GOOD,
        files=files,
    )
    assert response.status_code == 413, response.text
    assert reason in response.json()["error"]["message"]
    assert sims.total_calls() == 0
    assert usage.since_mark() == []


def test_deadline_cancels_the_provider_job(start_gateway: Callable[..., Gateway], sims: Simulators) -> None:
    gateway = start_gateway(GATEWAY_REQUEST_TIMEOUT_S="1.0")
    sims.fal.fault("stuck", on="submit", times=1)
    response = httpx.post(
        f"{gateway.url}{GEN}",
        headers={"Authorization": f"Bearer {gateway.key}"},
        json={**GOOD, "model": "fal/flux.2-klein-4b"},
        timeout=10,
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert response.elapsed.total_seconds() < 3.0
    assert sims.fal.stats()["cancels"] == 1, "the abandoned fal job must be cancelled upstream"


def test_a_client_that_leaves_mid_body_is_not_an_error(gateway: Gateway, sims: Simulators, usage: UsageLog) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (
        f"POST {GEN} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(head.encode() + b'{"model": "flux.2-')  # ...and leaves before the rest
    assert _wait_until(lambda: "client left before sending its whole request" in gateway.process.log_text())
    assert "unhandled error" not in gateway.process.log_text()
    assert sims.total_calls() == 0
    assert usage.since_mark() == []


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()
