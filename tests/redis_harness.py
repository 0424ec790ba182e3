"""What the Redis-backed unit suites share: clients that count their round trips, and a clock moved by hand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from redis.asyncio import Connection, ConnectionPool, Redis

from gateway.metering.keys import utc_day


@dataclass
class RoundTrips:
    """Packed sends to Redis: one per command, one per whole pipeline, i.e. one per network round trip."""

    count: int = 0


class CountingConnection(Connection):
    """A connection that counts every request it writes to the socket."""

    def __init__(self, *, round_trips: RoundTrips, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._round_trips = round_trips

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._round_trips.count += 1
        await super().send_packed_command(command, check_health)


def counting_redis(url: str, **options: Any) -> tuple[Redis, RoundTrips]:
    """A client (with its own pool, like one gateway instance) whose round trips are counted."""
    round_trips = RoundTrips()
    pool = ConnectionPool.from_url(url, connection_class=CountingConnection, round_trips=round_trips, **options)
    return Redis(connection_pool=pool), round_trips


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def ms(self) -> int:
        return int(self.now * 1000)

    def day(self) -> date:
        return utc_day(self.now)
