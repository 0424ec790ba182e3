"""Redis key names of the accounting engine, shared by `Quota` (admission) and `Ledger` (settlement).

Every key of a team carries the hash tag `{T}`, so a team's keys share one Redis Cluster slot and one Lua
script may touch all of them. `usage:teams` is the one key outside any team's slot.

  rl:{T}:team, rl:{T}:key:{kid}       zset request_id -> arrival time (s): the sliding 60 s rpm window
  cc:{T}:team, cc:{T}:key:{kid}       zset request_id -> slot expiry time (s): requests in flight
  resv:{T}                            hash request_id -> "{kid}|{micros}": budget reserved by admission
  resv:{T}:exp                        zset request_id -> reservation expiry time (s)
  resv:{T}:sum                        hash team / key:{kid} -> reserved micro-USD (sum of the live entries)
  spend:{T}:day:{YYYY-MM-DD}          hash team / key:{kid} -> billed micro-USD in that UTC day
  spend:{T}:month:{YYYY-MM}           ... in that UTC month
  spend:{T}:total                     ... ever
  usage:{T}                           stream, one entry per UsageRecord (its to_fields())
  usage:{T}:day:{YYYY-MM-DD}          hash of day counters: requests, billed_micros, provider_cost_micros,
                                      output_mp_micro, input_mp_micro, and each again under key:{kid}:,
                                      model:{model}:, deployment:{deployment}:
  usage:{T}:seen                      zset request_id -> settle time (ms): settled ids, kept SEEN_TTL_S
  usage:teams                         set of teams with usage
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from gateway.accounts.principal import Period

USAGE_TEAMS = "usage:teams"
COUNTERS = ("requests", "billed_micros", "provider_cost_micros", "output_mp_micro", "input_mp_micro")
DIMENSIONS = ("key", "model", "deployment")  # the day counters are kept per one of these at a time


def _tag(team: str) -> str:
    """`{T}`; braces in a team name would move the hash tag and let two teams' key names collide."""
    if not team or "{" in team or "}" in team:
        raise ValueError(f"team name {team!r} cannot be used in Redis keys: it must be non-empty, without braces")
    return f"{{{team}}}"


def utc_day(ts_s: float) -> date:
    """The UTC calendar day of a Unix time in seconds."""
    return datetime.fromtimestamp(ts_s, UTC).date()


def rate_window(team: str, key_id: str | None = None) -> str:
    """The sliding rpm window of a team, or of one of its keys."""
    return f"rl:{_tag(team)}:team" if key_id is None else f"rl:{_tag(team)}:key:{key_id}"


def concurrency(team: str, key_id: str | None = None) -> str:
    """The in-flight slots of a team, or of one of its keys."""
    return f"cc:{_tag(team)}:team" if key_id is None else f"cc:{_tag(team)}:key:{key_id}"


def reservations(team: str) -> str:
    return f"resv:{_tag(team)}"


def reservation_expiry(team: str) -> str:
    return f"resv:{_tag(team)}:exp"


def reserved_sums(team: str) -> str:
    return f"resv:{_tag(team)}:sum"


def spend(team: str, period: Period, ts_s: float) -> str:
    """The spend hash of the UTC `period` bucket that `ts_s` falls in."""
    if period is Period.TOTAL:
        return f"spend:{_tag(team)}:total"
    day = utc_day(ts_s)
    bucket = day.isoformat() if period is Period.DAY else f"{day.year:04d}-{day.month:02d}"
    return f"spend:{_tag(team)}:{period.value}:{bucket}"


def scope_field(key_id: str | None) -> str:
    """The field of a spend or reserved-sum hash that holds a team's total, or one key's."""
    return "team" if key_id is None else f"key:{key_id}"


def usage_stream(team: str) -> str:
    return f"usage:{_tag(team)}"


def usage_day(team: str, day: date) -> str:
    return f"usage:{_tag(team)}:day:{day.isoformat()}"


def usage_seen(team: str) -> str:
    return f"usage:{_tag(team)}:seen"
