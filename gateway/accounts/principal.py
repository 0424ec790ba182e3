"""The caller of a request, as authentication resolves it, and the limits that apply."""

from __future__ import annotations

import enum
from dataclasses import dataclass

ADMIN_TEAM = "_admin"  # requests made with GATEWAY_ADMIN_KEY are metered under this team


class Period(enum.StrEnum):
    """The window a budget covers; day and month are UTC calendar periods."""

    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits for one scope (a team or a key); None means unlimited."""

    rpm: int | None = None  # requests per minute, over any sliding 60 s window
    concurrency: int | None = None  # requests in flight
    budget_micros: int | None = None  # spend allowed per `budget_period`, integer micro-USD
    budget_period: Period = Period.MONTH


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. The admin key is a principal too (team `_admin`, no limits)."""

    team: str
    key_id: str
    is_admin: bool = False
    models: frozenset[str] | None = None  # canonical model ids this key may use; None: all
    key_limits: Limits = Limits()
    team_limits: Limits = Limits()

    def may_use(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models
