"""The /_sim control routes: fault script semantics, latency config, stats and reset."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from providers.simulators.server import SimulatorThread

T2I = "/fal-ai/flux-2/klein/4b"
EDIT = "/fal-ai/flux-2/klein/4b/edit"


def submit_code(client: httpx.Client) -> int:
    return client.post(T2I, json={"prompt": "x"}).status_code


def test_faults_are_consumed_in_order_and_counted_down(fal_http: httpx.Client) -> None:
    fal_http.post("/_sim/faults", json={"kind": "http_500", "on": "submit", "times": 2}).raise_for_status()
    fal_http.post("/_sim/faults", json={"kind": "http_503", "on": "any", "times": 1}).raise_for_status()
    pending = fal_http.get("/_sim/faults").json()["faults"]
    assert [(f["kind"], f["times"]) for f in pending] == [("http_500", 2), ("http_503", 1)]
    assert submit_code(fal_http) == 500
    assert fal_http.get("/_sim/faults").json()["faults"][0]["times"] == 1
    assert [submit_code(fal_http) for _ in range(3)] == [500, 503, 200]
    assert fal_http.get("/_sim/faults").json() == {"faults": []}


def test_a_fault_only_matches_its_op(fal_http: httpx.Client) -> None:
    fal_http.post("/_sim/faults", json={"kind": "http_500", "on": "result", "times": 1}).raise_for_status()
    handle = fal_http.post(T2I, json={"prompt": "x"}).json()
    assert fal_http.get(handle["status_url"]).status_code in (200, 202)
    assert fal_http.get(handle["response_url"]).status_code == 500


def test_times_null_lasts_until_cleared(fal_http: httpx.Client) -> None:
    fal_http.post("/_sim/faults", json={"kind": "http_503", "on": "submit", "times": None}).raise_for_status()
    assert [submit_code(fal_http) for _ in range(3)] == [503, 503, 503]
    assert fal_http.delete("/_sim/faults").json() == {"faults": []}
    assert submit_code(fal_http) == 200


def test_omitted_times_and_on_mean_until_cleared_on_any_op(fal_http: httpx.Client) -> None:
    fal_http.post("/_sim/faults", json={"kind": "http_429"}).raise_for_status()
    assert fal_http.get("/_sim/faults").json()["faults"] == [
        {"kind": "http_429", "on": "any", "times": None, "retry_after": 1.0}
    ]
    assert submit_code(fal_http) == 429
    assert fal_http.get("/fal-ai/flux-2/requests/x/status").status_code == 429


def test_job_faults_are_only_taken_by_submits(fal_http: httpx.Client) -> None:
    handle = fal_http.post(T2I, json={"prompt": "before"}).json()
    fal_http.post("/_sim/faults", json={"kind": "stuck", "on": "any", "times": 1}).raise_for_status()
    assert fal_http.get(handle["status_url"]).status_code in (200, 202)  # a status call does not take it
    fal_http.post(T2I, json={"prompt": "after"}).raise_for_status()
    jobs = fal_http.get("/_sim/stats").json()["jobs"]
    assert [job["fault"] for job in jobs] == [None, "stuck"]


def test_unauthenticated_calls_do_not_consume_faults(
    sims: SimulatorThread, http: httpx.Client, fal_http: httpx.Client
) -> None:
    fal_http.post("/_sim/faults", json={"kind": "http_500", "on": "submit", "times": 1}).raise_for_status()
    assert http.post(sims.fal_url + T2I, json={"prompt": "x"}).status_code == 401
    assert submit_code(fal_http) == 500
    assert fal_http.get("/_sim/stats").json()["calls"]["submit"] == 2


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "explode"},
        {"kind": "stuck", "on": "status"},
        {"kind": "http_500", "on": "create"},  # a Replicate op, not a fal one
        {"kind": "http_500", "times": 0},
        {"kind": "http_500", "times": True},
        {"kind": "http_429", "retry_after": -1},
        {"kind": "http_500", "color": "red"},
        [],
    ],
)
def test_bad_faults_are_400(fal_http: httpx.Client, fault: Any) -> None:
    response = fal_http.post("/_sim/faults", json=fault)
    assert response.status_code == 400
    assert response.json()["detail"]


def test_replicate_ops_are_its_own(replicate_http: httpx.Client) -> None:
    assert replicate_http.post("/_sim/faults", json={"kind": "http_500", "on": "submit"}).status_code == 400
    assert replicate_http.post("/_sim/faults", json={"kind": "nsfw", "on": "create"}).status_code == 200
    assert replicate_http.post("/_sim/faults", json={"kind": "nsfw", "on": "get"}).status_code == 400


def test_config_is_partial_and_reset_restores_it(sims: SimulatorThread, fal_http: httpx.Client) -> None:
    assert fal_http.get("/_sim/config").json() == {"queue_ms": 0, "run_ms": 20}
    assert fal_http.post("/_sim/config", json={"run_ms": 700}).json() == {"queue_ms": 0, "run_ms": 700}
    assert fal_http.post("/_sim/config", json={"queue_ms": 5}).json() == {"queue_ms": 5, "run_ms": 700}
    for bad in ({"queue_ms": -1}, {"run_ms": 1.5}, {"run_ms": True}, {"latency": 3}, [1]):
        assert fal_http.post("/_sim/config", json=bad).status_code == 400
    sims.reset()
    assert fal_http.get("/_sim/config").json() == {"queue_ms": 0, "run_ms": 20}


def test_stats_count_calls_and_summarise_data_uris(fal_http: httpx.Client, data_uri: Any) -> None:
    images = [data_uri((1, 2, 3), (64, 48)), data_uri((4, 5, 6), (10, 20), "JPEG")]
    handle = fal_http.post(EDIT, json={"prompt": "edit", "image_urls": images, "seed": 9}).json()
    fal_http.get(handle["status_url"])
    fal_http.put(handle["cancel_url"])
    stats = fal_http.get("/_sim/stats").json()
    assert stats["calls"] == {"submit": 1, "status": 1, "result": 0, "cancel": 1, "file": 0}
    [job] = stats["jobs"]
    assert (job["id"], job["model"]) == (handle["request_id"], "fal-ai/flux-2/klein/4b/edit")
    summary = job["input"]["image_urls"]
    assert [(s["format"], s["width"], s["height"]) for s in summary] == [("png", 64, 48), ("jpeg", 10, 20)]
    assert all(isinstance(s["bytes"], int) and s["bytes"] > 0 for s in summary)
    assert (job["input"]["prompt"], job["input"]["seed"]) == ("edit", 9)


def test_reset_clears_jobs_stats_and_faults(sims: SimulatorThread, fal_http: httpx.Client) -> None:
    handle = fal_http.post(T2I, json={"prompt": "x"}).json()
    fal_http.post("/_sim/faults", json={"kind": "http_500", "on": "status"}).raise_for_status()
    assert fal_http.post("/_sim/reset").json() == {"reset": True}
    assert fal_http.get("/_sim/stats").json() == {
        "calls": {"submit": 0, "status": 0, "result": 0, "cancel": 0, "file": 0},
        "cancels": 0,
        "jobs": [],
    }
    assert fal_http.get("/_sim/faults").json() == {"faults": []}
    assert fal_http.get(handle["status_url"]).status_code == 404  # the job is gone


def test_replicate_stats(replicate_http: httpx.Client, data_uri: Any) -> None:
    body = {"input": {"prompt": "p", "images": [data_uri((9, 9, 9))]}}
    prediction = replicate_http.post("/v1/models/black-forest-labs/flux-2-klein-4b/predictions", json=body).json()
    replicate_http.get(prediction["urls"]["get"])
    stats = replicate_http.get("/_sim/stats").json()
    assert stats["calls"] == {"create": 1, "get": 1, "cancel": 0, "file": 0}
    [job] = stats["jobs"]
    assert job["model"] == "black-forest-labs/flux-2-klein-4b"
    assert job["status"] in ("starting", "processing", "succeeded")
    assert job["input"]["images"][0]["format"] == "png"
