"""Deployment health as the router sees it: breaker state and latency estimates, as pure values.

The state itself lives in Redis (`gateway.health_store`), updated atomically by every gateway instance;
this module holds the shapes and the pure decisions made on them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.StrEnum):
    """Envoy-style outlier states: closed (healthy), open (ejected), half-open (probing)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(enum.StrEnum):
    """Whether the router may send a request to a deployment now."""

    ALLOW = "allow"  # closed: send freely
    PROBE = "probe"  # open past its cool-down, or half-open: only with a probe slot
    DENY = "deny"  # open (or cooling down after a 429) and not yet due


class AttemptOutcome(enum.StrEnum):
    """How an attempt ended, as health tracking counts it. Client-side errors are never recorded."""

    SUCCESS = "success"
    FAILURE = "failure"  # retryable provider failure: 5xx, connect error, timeout, malformed, stuck
    RATE_LIMITED = "rate_limited"  # 429: a failure that also sets a cool-down from Retry-After
    AUTH_FAILURE = "auth_failure"  # our credentials were refused: open the breaker for auth_open_s


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a deployment is ejected and how it comes back."""

    consecutive_failures: int = 5  # open after this many failures in a row...
    window_s: float = 60.0  # ...or when, within one window,
    min_requests: int = 20  # at least this many attempts
    failure_rate: float = 0.5  # failed at least this often
    open_s: float = 30.0  # stay open this long, then allow probes
    half_open_probes: int = 1  # concurrent probe attempts while half-open
    successes_to_close: int = 2  # probe successes that close the breaker again
    auth_open_s: float = 300.0  # an auth failure ejects for longer: an operator must fix the key
    max_retry_after_s: float = 300.0  # cap on a provider's Retry-After cool-down
    latency_alpha: float = 0.2  # weight of the newest sample in the latency averages


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """One deployment's shared health, as of the snapshot. Times are Unix epoch seconds."""

    key: str
    state: BreakerState = BreakerState.CLOSED
    # OPEN: probes allowed from this time. CLOSED: a 429 cool-down until this time (0 = none).
    retry_at: float = 0.0
    consecutive_failures: int = 0
    probes_in_flight: int = 0
    half_open_successes: int = 0
    window_successes: int = 0
    window_failures: int = 0
    # Seconds to a result per output megapixel: a decaying mean and a p95 estimate. None = no data yet.
    latency_s_per_mp: float | None = None
    latency_p95_s_per_mp: float | None = None
    latency_samples: int = 0

    def admission(self, now: float) -> Admission:
        """Whether a request may go here at `now`."""
        if self.state is BreakerState.CLOSED:
            return Admission.ALLOW if now >= self.retry_at else Admission.DENY
        if self.state is BreakerState.OPEN and now < self.retry_at:
            return Admission.DENY
        return Admission.PROBE

    @property
    def success_rate(self) -> float | None:
        """Successes over attempts in the current window; None with no attempts."""
        total = self.window_successes + self.window_failures
        return self.window_successes / total if total else None
