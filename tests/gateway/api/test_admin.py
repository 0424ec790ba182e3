"""The admin API over real HTTP: every route, who may call it, and how bad input is answered."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.redis_server import EmbeddedRedis
from tests.gateway.admin_app import ADMIN_KEY, serve_admin_app

MODEL = "flux.2-klein-4b"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The admin app on its own redis-server, shared by this module's tests (each uses its own teams)."""
    with (
        EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False) as server,
        serve_admin_app(server.url) as url,
    ):
        yield url


@pytest.fixture
def api(base_url: str) -> Iterator[httpx.Client]:
    """A client sending the admin key."""
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=5) as client:
        yield client


def _new_team_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def team(api: httpx.Client) -> str:
    """A fresh team for this test (teams are never deleted, so each test makes its own)."""
    team_id = _new_team_id()
    assert api.post("/v1/admin/teams", json={"id": team_id}).status_code == 201
    return team_id


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_team_routes(api: httpx.Client) -> None:
    team_id = _new_team_id()
    body = {"id": team_id, "name": "Acme Research", "rpm": 600, "concurrency": 20, "budget_usd": "250.5"}
    created = api.post("/v1/admin/teams", json=body)
    assert created.status_code == 201
    team = created.json()
    assert team["object"] == "team"
    assert team["id"] == team_id
    assert team["name"] == "Acme Research"
    assert isinstance(team["created_at"], int)
    assert (team["rpm"], team["concurrency"]) == (600, 20)
    assert (team["budget_usd"], team["budget_micros"], team["budget_period"]) == ("250.500000", 250_500_000, "month")

    assert api.get(f"/v1/admin/teams/{team_id}").json() == team
    listed = api.get("/v1/admin/teams").json()
    assert listed["object"] == "list"
    assert team in listed["data"]

    patched = api.patch(f"/v1/admin/teams/{team_id}", json={"rpm": None, "budget_usd": 0.1, "budget_period": "day"})
    assert patched.status_code == 200
    after = patched.json()
    assert after["rpm"] is None  # null clears a limit
    assert after["concurrency"] == 20  # absent fields are untouched
    assert (after["budget_usd"], after["budget_micros"], after["budget_period"]) == ("0.100000", 100_000, "day")
    assert api.patch(f"/v1/admin/teams/{team_id}", json={"name": "Acme"}).json()["name"] == "Acme"
    cleared = api.patch(f"/v1/admin/teams/{team_id}", json={"budget_usd": None, "concurrency": None}).json()
    assert (cleared["budget_usd"], cleared["budget_micros"], cleared["concurrency"]) == (None, None, None)


def test_key_routes(api: httpx.Client, team: str) -> None:
    body = {"team": team, "name": "ci", "models": ["flux-2-klein-4b"], "rpm": 60, "budget_usd": 5}
    body["budget_period"] = "day"
    created = api.post("/v1/admin/keys", json=body)
    assert created.status_code == 201
    key = created.json()
    raw = key.pop("key")
    assert raw.startswith(f"fgk_{team}_{key['id']}_")
    assert key["object"] == "api_key"
    assert (key["team"], key["name"], key["status"], key["revoked_at"]) == (team, "ci", "active", None)
    assert key["models"] == [MODEL]  # an alias is stored as the canonical id
    assert (key["rpm"], key["concurrency"]) == (60, None)
    assert (key["budget_usd"], key["budget_micros"], key["budget_period"]) == ("5.000000", 5_000_000, "day")
    other = api.post("/v1/admin/keys", json={"team": team}).json()
    assert other["models"] is None
    assert other["name"] == ""

    assert api.get(f"/v1/admin/keys/{team}/{key['id']}").json() == key
    for params in ({"team": team}, {}):
        listed = api.get("/v1/admin/keys", params=params).json()
        assert sorted(k["id"] for k in listed["data"] if k["team"] == team) == sorted([key["id"], other["id"]])
        assert all("key" not in k and "hash" not in k for k in listed["data"])  # the raw key is shown once

    # A team key authenticates, but it is not an admin.
    denied = httpx.get(f"{api.base_url}/v1/admin/teams", headers={"authorization": f"Bearer {raw}"})
    assert denied.status_code == 403
    assert _error(denied)["type"] == "permission_error"

    revoked = api.post(f"/v1/admin/keys/{team}/{key['id']}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert isinstance(revoked.json()["revoked_at"], int)
    assert api.delete(f"/v1/admin/keys/{team}/{key['id']}").json() == revoked.json()  # idempotent
    assert api.delete(f"/v1/admin/keys/{team}/{other['id']}").json()["status"] == "revoked"

    # A revoked key no longer authenticates at all.
    gone = httpx.get(f"{api.base_url}/v1/admin/teams", headers={"authorization": f"Bearer {raw}"})
    assert gone.status_code == 401
    assert raw not in gone.text


@pytest.mark.parametrize(
    ("headers", "status", "error_type"),
    [
        ({}, 401, "authentication_error"),
        ({"authorization": "Bearer sk-not-the-admin"}, 401, "authentication_error"),
        ({"authorization": "Token abc"}, 401, "authentication_error"),
        ({"authorization": "Bearer fgk_acme_0123456789ab_forged"}, 401, "authentication_error"),
    ],
)
def test_callers_without_the_admin_key_are_refused(
    base_url: str, headers: dict[str, str], status: int, error_type: str
) -> None:
    for method, path in [("GET", "/v1/admin/teams"), ("POST", "/v1/admin/teams"), ("GET", "/v1/admin/keys")]:
        response = httpx.request(method, f"{base_url}{path}", headers=headers, json={"id": "bad id"})
        assert response.status_code == status  # auth is checked before the body
        assert _error(response)["type"] == error_type
        assert "sk-not-the-admin" not in response.text
        assert "forged" not in response.text


BAD_INPUTS = [
    # (method, path, body, status, param)
    ("POST", "/teams", {"id": "Bad_Id"}, 400, "id"),
    ("POST", "/teams", {"id": "-leading-dash"}, 400, "id"),
    ("POST", "/teams", {"id": "x" * 41}, 400, "id"),
    ("POST", "/teams", {"name": "no id"}, 400, "id"),
    ("POST", "/teams", {"id": "ok", "budget_period": "week"}, 400, "budget_period"),
    ("POST", "/teams", {"id": "ok", "budget_usd": "-1"}, 400, "budget_usd"),
    ("POST", "/teams", {"id": "ok", "budget_usd": -0.5}, 400, "budget_usd"),
    ("POST", "/teams", {"id": "ok", "budget_usd": "0.0000001"}, 400, "budget_usd"),
    ("POST", "/teams", {"id": "ok", "budget_usd": 0.1234567}, 400, "budget_usd"),
    ("POST", "/teams", {"id": "ok", "budget_usd": "ten"}, 400, "budget_usd"),
    ("POST", "/teams", {"id": "ok", "budget_usd": "1e3"}, 400, "budget_usd"),
    ("POST", "/teams", {"id": "ok", "budget_usd": True}, 400, "budget_usd"),
    ("POST", "/teams", {"id": "ok", "budget_usd": "1000000001"}, 400, "budget_usd"),
    ("POST", "/teams", {"id": "ok", "rpm": 0}, 400, "rpm"),
    ("POST", "/teams", {"id": "ok", "rpm": "ten"}, 400, "rpm"),
    ("POST", "/teams", {"id": "ok", "concurrency": -1}, 400, "concurrency"),
    ("POST", "/teams", {"id": "ok", "colour": "red"}, 400, "colour"),
    ("POST", "/teams", {"id": "{team}"}, 409, "id"),
    ("PATCH", "/teams/{team}", {"name": None}, 400, "name"),
    ("PATCH", "/teams/{team}", {"budget_usd": "1.0000001"}, 400, "budget_usd"),
    ("PATCH", "/teams/nope", {"rpm": 5}, 404, "team"),
    ("PATCH", "/teams/NOT_AN_ID", {"rpm": 5}, 404, "team"),
    ("GET", "/teams/nope", None, 404, "team"),
    ("POST", "/keys", {"team": "nope"}, 404, "team"),
    ("POST", "/keys", {"team": "Bad Team"}, 400, "team"),
    ("POST", "/keys", {"name": "no team"}, 400, "team"),
    ("POST", "/keys", {"team": "{team}", "models": MODEL}, 400, "models"),
    ("POST", "/keys", {"team": "{team}", "models": [1]}, 400, "models.0"),
    ("POST", "/keys", {"team": "{team}", "models": []}, 400, "models"),
    ("POST", "/keys", {"team": "{team}", "models": ["flux.9-ultra"]}, 400, "models"),
    ("POST", "/keys", {"team": "{team}", "budget_period": "year"}, 400, "budget_period"),
    ("GET", "/keys?team=nope", None, 404, "team"),
    ("GET", "/keys/{team}/0123456789ab", None, 404, "key_id"),
    ("POST", "/keys/{team}/0123456789ab/revoke", None, 404, "key_id"),
    ("DELETE", "/keys/{team}/not-hex", None, 404, "key_id"),
    ("DELETE", "/keys/nope/0123456789ab", None, 404, "key_id"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), BAD_INPUTS)
def test_bad_admin_input(
    api: httpx.Client, team: str, method: str, path: str, body: dict[str, Any] | None, status: int, param: str
) -> None:
    if body is not None:
        body = {k: (v.replace("{team}", team) if isinstance(v, str) else v) for k, v in body.items()}
    response = api.request(method, f"/v1/admin{path.replace('{team}', team)}", json=body)
    assert response.status_code == status, response.text
    error = _error(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_malformed_json_is_a_400(api: httpx.Client) -> None:
    response = api.post("/v1/admin/teams", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert _error(response)["type"] == "invalid_request_error"
