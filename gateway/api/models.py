"""`GET /v1/models` and `GET /v1/models/{id}`: OpenAI's list shape, plus what the catalog knows."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends
from starlette.responses import Response

from gateway.catalog import Model, deployment_summary
from gateway.exceptions import ModelNotFound
from gateway.services import Caller, authenticated

router = APIRouter()


def _card(model: Model) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


@router.get("/v1/models")
async def list_models(caller: Annotated[Caller, Depends(authenticated)]) -> Response:
    """Every canonical model id (aliases and provider-pinned ids resolve via the detail route)."""
    svc = caller.svc
    body = {"object": "list", "data": [{**_card(m), "aliases": list(m.aliases)} for m in svc.catalog.models]}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, caller: Annotated[Caller, Depends(authenticated)]) -> Response:
    """One model by canonical id, alias or pinned deployment key, with limits and priced deployments."""
    svc = caller.svc
    ref = svc.catalog.resolve(model_id)
    if ref is None:
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
    model = ref.model
    limits = model.limits
    body = {
        **_card(model),
        "name": model.name,
        "aliases": list(model.aliases),
        "modes": sorted(m.value for m in model.modes),
        "pinned_provider": ref.pinned_provider,
        "default_size": f"{model.default_size[0]}x{model.default_size[1]}",
        "limits": {
            "min_side": limits.min_side,
            "max_side": limits.max_side,
            "max_n": limits.max_n,
            "max_input_images": limits.max_input_images,
            "supports_mask": limits.supports_mask,
        },
        "deployments": [
            deployment_summary(d)
            for d in model.deployments
            if ref.pinned_provider is None or d.provider == ref.pinned_provider
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json")
