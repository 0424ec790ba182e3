"""The admin API under `/v1/admin`: teams and their API keys. Every route needs the gateway's admin key."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.accounts.authenticator import require_admin
from gateway.accounts.keys import is_key_id, is_team_id
from gateway.api.admin_schemas import KeyCreate, TeamCreate, TeamUpdate, key_json, team_json
from gateway.exceptions import InvalidRequest, NotFound
from gateway.services import Services

log = logging.getLogger("gateway.admin")
router = APIRouter(prefix="/v1/admin")


async def admin_services(request: Request) -> Services:
    """FastAPI dependency: the process's `Services`, once the caller is shown to hold the admin key."""
    svc: Services = request.app.state.services
    require_admin(await svc.authenticator.authenticate(request.headers.get("authorization")))
    return svc


Admin = Annotated[Services, Depends(admin_services)]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _team_id(team_id: str) -> str:
    """A team id from a path or query; malformed ids name no team, so they get a 404 without a lookup."""
    if not is_team_id(team_id):
        raise NotFound(f"No team '{team_id}'.", param="team")
    return team_id


@router.post("/teams")
async def create_team(body: TeamCreate, svc: Admin) -> Response:
    """Create a team → 201 with the team; 409 if the id is taken."""
    team = await svc.accounts.create_team(body.id, body.name, body.limits())
    log.info("admin: created team %s", team.id)
    return _json(team_json(team), 201)


@router.get("/teams")
async def list_teams(svc: Admin) -> Response:
    return _json({"object": "list", "data": [team_json(t) for t in await svc.accounts.list_teams()]})


@router.get("/teams/{team_id}")
async def get_team(team_id: str, svc: Admin) -> Response:
    team = await svc.accounts.get_team(_team_id(team_id))
    if team is None:
        raise NotFound(f"No team '{team_id}'.", param="team")
    return _json(team_json(team))


@router.patch("/teams/{team_id}")
async def update_team(team_id: str, body: TeamUpdate, svc: Admin) -> Response:
    """Change the fields present in the body; a null limit becomes unlimited."""
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if "name" in changes and changes["name"] is None:
        raise InvalidRequest("A team's name cannot be null.", param="name")
    if "budget_usd" in changes:
        changes["budget_micros"] = changes.pop("budget_usd")
    team = await svc.accounts.update_team(_team_id(team_id), **changes)
    log.info("admin: updated team %s (%s)", team.id, ", ".join(sorted(changes)) or "no changes")
    return _json(team_json(team))


@router.post("/keys")
async def create_key(body: KeyCreate, svc: Admin) -> Response:
    """Create a key → 201 with the raw key in `key`: shown this once, never retrievable again."""
    models = None
    if body.models is not None:
        refs = {name: svc.catalog.resolve(name) for name in body.models}
        if unknown := [name for name, ref in refs.items() if ref is None]:
            raise InvalidRequest(f"Unknown model(s): {', '.join(unknown)}.", param="models")
        models = {ref.model.id for ref in refs.values() if ref is not None}  # aliases → canonical ids
    info, raw_key = await svc.accounts.create_key(body.team, body.name, models, body.limits())
    log.info("admin: created key %s for team %s", info.id, info.team)
    return _json({**key_json(info), "key": raw_key}, 201)


@router.get("/keys")
async def list_keys(svc: Admin, team: str | None = None) -> Response:
    """Every key, or one team's (404 if that team does not exist)."""
    if team is not None:
        await svc.accounts.get_team(_team_id(team), required=True)
    return _json({"object": "list", "data": [key_json(k) for k in await svc.accounts.list_keys(team)]})


@router.get("/keys/{team_id}/{key_id}")
async def get_key(team_id: str, key_id: str, svc: Admin) -> Response:
    info = await svc.accounts.get_key(team_id, key_id) if is_team_id(team_id) and is_key_id(key_id) else None
    if info is None:
        raise NotFound(f"No key '{key_id}' in team '{team_id}'.", param="key_id")
    return _json(key_json(info))


@router.post("/keys/{team_id}/{key_id}/revoke")
@router.delete("/keys/{team_id}/{key_id}")
async def revoke_key(team_id: str, key_id: str, svc: Admin) -> Response:
    """Revoke a key (idempotent) → 200 with the key; every instance refuses it within its auth cache TTL."""
    if not (is_team_id(team_id) and is_key_id(key_id)):
        raise NotFound(f"No key '{key_id}' in team '{team_id}'.", param="key_id")
    info = await svc.accounts.revoke_key(team_id, key_id)
    log.info("admin: revoked key %s of team %s", info.id, info.team)
    return _json(key_json(info))
