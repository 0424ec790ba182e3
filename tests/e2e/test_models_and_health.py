"""`/v1/models`, `/healthz` and `/readyz`."""

from __future__ import annotations

import httpx
from openai import OpenAI

from tests.e2e.conftest import Gateway


def test_models_list_with_the_sdk(client: OpenAI) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == ["flux.2-klein-4b"]
    assert models[0].owned_by == "black-forest-labs"
    assert models[0].object == "model"


def test_model_detail_resolves_aliases(client: OpenAI) -> None:
    for name in ("flux.2-klein-4b", "flux-2-klein-4b"):
        model = client.models.retrieve(name)
        assert model.id == "flux.2-klein-4b"
        extra = model.model_extra or {}
        assert extra["aliases"] == ["flux-2-klein-4b"]
        assert extra["modes"] == ["edit", "generate"]
        assert extra["limits"]["max_side"] == 2048
        assert extra["limits"]["max_input_images"] == 4
        prices = {d["key"]: d["pricing"]["output_usd_per_mp"] for d in extra["deployments"]}
        assert prices == {
            "fal/flux.2-klein-4b": "0.005000",
            "fal/flux.2-klein-4b-edit": "0.010000",
            "replicate/flux.2-klein-4b": "0.001000",
        }


def test_model_detail_for_a_pinned_deployment(gateway: Gateway) -> None:
    response = httpx.get(
        f"{gateway.url}/v1/models/fal/flux.2-klein-4b-edit", headers={"Authorization": f"Bearer {gateway.key}"}
    )
    body = response.json()
    assert body["id"] == "flux.2-klein-4b"
    assert body["pinned_provider"] == "fal"
    assert [d["key"] for d in body["deployments"]] == ["fal/flux.2-klein-4b", "fal/flux.2-klein-4b-edit"]


def test_unknown_model_detail_is_404(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/v1/models/dall-e-3", headers={"Authorization": f"Bearer {gateway.key}"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_unknown_route_is_openai_shaped(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_health_and_readiness(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "redis": "ok", "catalog": {"models": 1, "deployments": 3}}
