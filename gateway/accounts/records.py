"""Team and KeyInfo, and how each maps to and from its Redis hash fields (all strings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.accounts.principal import Limits, Period


@dataclass(frozen=True, slots=True)
class Team:
    """A team: the unit budgets and rate limits are shared by."""

    id: str
    name: str
    created_at: int  # Unix seconds
    limits: Limits


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key's record, without its secret or the secret's hash."""

    id: str
    team: str
    name: str
    created_at: int  # Unix seconds
    revoked_at: int | None
    models: frozenset[str] | None  # canonical model ids; None: every model
    limits: Limits

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def limit_fields(limits: Limits) -> dict[str, str]:
    """Hash fields for `limits`; unlimited ones are left out (an absent field means unlimited)."""
    values = {
        "rpm": limits.rpm,
        "concurrency": limits.concurrency,
        "budget_micros": limits.budget_micros,
        "budget_period": limits.budget_period.value,
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def limits_from(fields: Mapping[str, str]) -> Limits:
    def number(name: str) -> int | None:
        value = fields.get(name)
        return int(value) if value else None

    period = fields.get("budget_period")
    return Limits(
        rpm=number("rpm"),
        concurrency=number("concurrency"),
        budget_micros=number("budget_micros"),
        budget_period=Period(period) if period else Period.MONTH,
    )


def team_from(team_id: str, fields: Mapping[str, str]) -> Team:
    return Team(team_id, fields.get("name") or team_id, int(fields.get("created_at") or 0), limits_from(fields))


def key_info_from(team_id: str, key_id: str, fields: Mapping[str, str]) -> KeyInfo:
    models = fields.get("models")
    revoked = fields.get("revoked_at")
    return KeyInfo(
        id=key_id,
        team=team_id,
        name=fields.get("name", ""),
        created_at=int(fields.get("created_at") or 0),
        revoked_at=int(revoked) if revoked else None,
        models=frozenset(models.split(",")) if models else None,
        limits=limits_from(fields),
    )


def decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def text_fields(row: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash as str → str, whether the Redis client decodes responses or not."""
    return {decode(k): decode(v) for k, v in row.items()}
