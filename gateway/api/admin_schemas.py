"""Admin API bodies: pydantic models for requests, and the JSON shape of teams and keys in responses.

Money is integer micro-USD inside; responses carry it both as `budget_micros` and as an exact decimal string
`budget_usd`. Requests may send `budget_usd` as a decimal string or a JSON number, with at most 6 decimals.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from gateway.accounts.keys import TEAM_ID_PATTERN
from gateway.accounts.principal import Limits, Period
from gateway.accounts.records import KeyInfo, Team
from gateway.pricing import MICROS_PER_USD, format_usd, parse_usd_micros

# Quota counters may be handled as Lua numbers (doubles, exact to 2^53 ≈ 9e15); 1e15 micros stays exact.
MAX_BUDGET_USD = 1_000_000_000
_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")


def _usd_as_micros(value: Any) -> Any:
    """A `budget_usd` value (decimal string or JSON number) as integer micro-USD; None passes through."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad_usd("must be a decimal string or a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad_usd("must be a finite number")
    text = repr(value) if isinstance(value, float) else str(value).strip()
    if isinstance(value, str) and not _DECIMAL.fullmatch(text):
        raise _bad_usd("must be a decimal amount such as '25' or '12.50'")
    try:
        micros = parse_usd_micros(text)
    except ValueError:
        raise _bad_usd("allows at most 6 decimal places (whole micro-dollars)") from None
    if micros < 0:
        raise _bad_usd("must not be negative")
    if micros > MAX_BUDGET_USD * MICROS_PER_USD:
        raise _bad_usd(f"must be at most {MAX_BUDGET_USD}")
    return micros


def _bad_usd(reason: str) -> PydanticCustomError:
    # A custom error, not ValueError: pydantic would prefix the message with "Value error, ".
    return PydanticCustomError("usd_amount", reason)


UsdMicros = Annotated[int, BeforeValidator(_usd_as_micros)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class LimitsBody(BaseModel):
    """Limit fields shared by teams and keys; absent or null means unlimited."""

    model_config = ConfigDict(extra="forbid")

    rpm: Annotated[int, Field(ge=1)] | None = None
    concurrency: Annotated[int, Field(ge=1)] | None = None
    budget_usd: UsdMicros | None = None  # micro-USD once validated
    budget_period: Period | None = None

    def limits(self) -> Limits:
        return Limits(self.rpm, self.concurrency, self.budget_usd, self.budget_period or Period.MONTH)


class TeamCreate(LimitsBody):
    id: Annotated[str, Field(pattern=TEAM_ID_PATTERN)]
    name: Name | None = None


class TeamUpdate(LimitsBody):
    name: Name | None = None


class KeyCreate(LimitsBody):
    team: Annotated[str, Field(pattern=TEAM_ID_PATTERN)]
    name: Annotated[str, Field(max_length=200)] = ""
    models: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=100)] | None = None


def _limits_json(limits: Limits) -> dict[str, Any]:
    micros = limits.budget_micros
    return {
        "rpm": limits.rpm,
        "concurrency": limits.concurrency,
        "budget_usd": format_usd(micros) if micros is not None else None,
        "budget_micros": micros,
        "budget_period": limits.budget_period.value,
    }


def team_json(team: Team) -> dict[str, Any]:
    return {
        "object": "team",
        "id": team.id,
        "name": team.name,
        "created_at": team.created_at,
        **_limits_json(team.limits),
    }


def key_json(key: KeyInfo) -> dict[str, Any]:
    return {
        "object": "api_key",
        "id": key.id,
        "team": key.team,
        "name": key.name,
        "status": "active" if key.active else "revoked",
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "models": sorted(key.models) if key.models is not None else None,
        **_limits_json(key.limits),
    }
