"""`GET /v1/usage`: spend and volume by team, day, key, model or deployment, as JSON or CSV.

An admin sees every team (or one, with `team=`); a team key sees only its own team. Numbers come from the
ledger's per-day counters, which settle atomically with each usage record.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.exceptions import InvalidRequest, PermissionDenied
from gateway.pricing import format_usd
from gateway.services import Services, services

router = APIRouter()
GROUPS = ("team", "day", "key", "model", "deployment")
MAX_DAYS = 366


@router.get("/v1/usage")
async def usage(request: Request, svc: Annotated[Services, Depends(services)]) -> Response:
    """Usage rows for `start`..`end` (UTC days, inclusive), grouped by `group_by` (comma-separated)."""
    principal = await svc.authenticator.authenticate(request.headers.get("authorization"))
    query = request.query_params
    team = query.get("team") or None
    if not principal.is_admin:
        if team not in (None, principal.team):
            raise PermissionDenied("A team key can only read its own team's usage.", param="team")
        team = principal.team
    today = datetime.now(UTC).date()
    start = _day(query.get("start"), "start", today - timedelta(days=29))
    end = _day(query.get("end"), "end", today)
    if start > end:
        raise InvalidRequest("'start' must not be after 'end'.", param="start")
    if (end - start).days >= MAX_DAYS:
        raise InvalidRequest(f"Ask for at most {MAX_DAYS} days at a time.", param="start")
    group_by = [g for g in (query.get("group_by") or "team").split(",") if g]
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown or not group_by:
        raise InvalidRequest(f"'group_by' takes a comma-separated list of {', '.join(GROUPS)}.", param="group_by")
    if sum(g in ("key", "model", "deployment") for g in group_by) > 1:
        # Counters are kept per day and per one of these dimensions, not per combination of them.
        raise InvalidRequest(
            "'group_by' may combine team and day with at most one of key, model, deployment.", param="group_by"
        )

    rows = await svc.ledger.summary([team] if team else None, start, end, group_by)
    data = [_row(r, group_by) for r in rows]
    if query.get("format") == "csv" or "text/csv" in request.headers.get("accept", ""):
        return Response(_csv(data, group_by), media_type="text/csv")
    totals = {
        "requests": sum(r["requests"] for r in data),
        "billed_micros": sum(r["billed_micros"] for r in data),
        "provider_cost_micros": sum(r["provider_cost_micros"] for r in data),
    }
    totals["billed_usd"] = format_usd(totals["billed_micros"])
    totals["provider_cost_usd"] = format_usd(totals["provider_cost_micros"])
    body = {
        "object": "list",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": group_by,
        "data": data,
        "totals": totals,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _day(text: str | None, param: str, default: date) -> date:
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be a date like 2026-11-27.", param=param) from None


def _row(row: dict[str, Any], group_by: list[str]) -> dict[str, Any]:
    out = {g: row.get(g) for g in group_by}
    out["requests"] = int(row.get("requests", 0))
    out["billed_micros"] = int(row.get("billed_micros", 0))
    out["billed_usd"] = format_usd(out["billed_micros"])
    out["provider_cost_micros"] = int(row.get("provider_cost_micros", 0))
    out["provider_cost_usd"] = format_usd(out["provider_cost_micros"])
    out["output_megapixels"] = round(float(row.get("output_megapixels", 0)), 6)
    out["input_megapixels"] = round(float(row.get("input_megapixels", 0)), 6)
    return out


def _csv(data: list[dict[str, Any]], group_by: list[str]) -> str:
    columns = [
        *group_by,
        "requests",
        "billed_usd",
        "billed_micros",
        "provider_cost_usd",
        "provider_cost_micros",
        "output_megapixels",
        "input_megapixels",
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(data)
    return out.getvalue()
