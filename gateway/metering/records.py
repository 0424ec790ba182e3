"""The usage record: one per request that reached a provider, what finance needs, integer micro-USD."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's usage, written exactly once (deduplicated by request id)."""

    request_id: str
    ts_ms: int  # when the request finished, Unix milliseconds (its day and month bucket the counters)
    team: str
    key_id: str
    model: str
    deployment: str  # the deployment that served it; "" when none did
    mode: str
    n: int
    width: int
    height: int
    output_megapixels: str  # decimal strings: exact enough for reports, never used for money
    input_megapixels: str
    billed_micros: int  # what the team is charged: the served attempt's cost (0 if nothing was served)
    provider_cost_micros: int  # true provider spend: served + wasted + unconfirmed attempts
    attempts: int
    attempts_json: str  # [{"deployment","outcome","disposition","cost_micros","ms","jobs"}, ...]
    latency_ms: int
    outcome: str  # "ok" or the error code the client got
    reserved_micros: int  # what admission reserved for this request: released on settle
    input_images: int = 0

    def to_fields(self) -> dict[str, str]:
        """Flat string fields, for a Redis stream entry or a spool line."""
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> UsageRecord:
        """The inverse of `to_fields` (values may be bytes or str)."""
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        ints = {
            "ts_ms",
            "n",
            "width",
            "height",
            "billed_micros",
            "provider_cost_micros",
            "attempts",
            "latency_ms",
            "reserved_micros",
            "input_images",
        }
        values = {
            name: int(text[name]) if name in ints else text[name] for name in cls.__dataclass_fields__ if name in text
        }
        return cls(**values)
