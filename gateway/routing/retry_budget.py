"""An Envoy-style retry budget: retries in flight stay a bounded fraction of requests in flight.

When every provider is failing, unbounded failover doubles the load on whatever still answers. The budget
allows a retry only while `retries in flight < max(min_retries, ratio * requests in flight)`. Per process:
each gateway instance bounds its own amplification, which bounds the fleet's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class RetryBudget:
    """Counts requests and retries in flight; `try_retry()` says whether one more retry may start."""

    ratio: float = 0.2
    min_retries: int = 3
    requests_in_flight: int = 0
    retries_in_flight: int = 0

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Count one request in flight for the duration of the block."""
        self.requests_in_flight += 1
        try:
            yield
        finally:
            self.requests_in_flight -= 1

    def try_retry(self) -> bool:
        """Take a retry slot if the budget allows; pair with `release_retry()`."""
        allowed = max(self.min_retries, int(self.ratio * self.requests_in_flight))
        if self.retries_in_flight >= allowed:
            return False
        self.retries_in_flight += 1
        return True

    def release_retry(self) -> None:
        self.retries_in_flight = max(0, self.retries_in_flight - 1)
