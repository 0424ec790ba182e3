"""A model's routing settings (from the catalog): the default policy, its knobs, and hedging."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Policy(enum.StrEnum):
    """How candidates are ordered."""

    COST = "cost"
    LATENCY = "latency"
    BALANCED = "balanced"


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """Start the next candidate if the first has not answered after a delay (None: its p95)."""

    enabled: bool = False
    delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """A model's routing defaults, from the catalog."""

    policy: Policy = Policy.COST
    balance_micros_per_s: int = 1000  # balanced: one second of expected latency is worth $0.001
    latency_prior_s_per_mp: float = 5.0  # expected seconds per megapixel before any measurement
    hedge: HedgeConfig = field(default_factory=HedgeConfig)
