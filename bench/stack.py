"""What every scenario shares: the process stack on loopback, /proc readings and a closed-loop driver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from gateway.child_server import ChildServer, python_module
from gateway.redis_server import EmbeddedRedis, free_port

ADMIN_KEY = "sk-bench"
FAL_KEY = "bench-fal-key"
REPLICATE_KEY = "bench-replicate-key"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(call: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> list[float]:
    """Run `requests` calls with `concurrency` workers; return each call's latency in ms."""
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def summary(name: str, latencies: list[float], wall_s: float) -> dict[str, float | str]:
    ordered = sorted(latencies)
    return {
        "name": name,
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "rps": round(len(ordered) / wall_s, 1),
    }


@contextlib.contextmanager
def stack(run_ms: int, log_dir: Path | None = None, **gateway_env: str) -> Iterator[tuple[dict[str, str], str, int]]:
    """Redis, both simulators and one gateway, on loopback; yields (simulator URLs, gateway URL, gateway pid).

    The children's logs (simulators.log, gateway.log) and the gateway's data directory (its usage spool, written
    when Redis does not answer) go to `log_dir`, else to a directory removed on exit.
    """
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        logs = log_dir or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        fal_port, replicate_port, gateway_port = free_port(), free_port(), free_port()
        sims_urls = {"fal": f"http://127.0.0.1:{fal_port}", "replicate": f"http://127.0.0.1:{replicate_port}"}
        sims = ChildServer(
            "simulators",
            python_module(
                "providers.simulators",
                *("--fal-port", str(fal_port), "--replicate-port", str(replicate_port)),
                *("--queue-ms", "0", "--run-ms", str(run_ms)),
            ),
            [f"{url}/_sim/stats" for url in sims_urls.values()],
            env={"FAL_KEY": FAL_KEY, "REPLICATE_API_TOKEN": REPLICATE_KEY},
            log_dir=logs,
        )
        gateway = ChildServer(
            "gateway",
            python_module("gateway", "serve", "--port", str(gateway_port)),
            [f"http://127.0.0.1:{gateway_port}/readyz"],
            env={
                "GATEWAY_ADMIN_KEY": ADMIN_KEY,
                "GATEWAY_REDIS_URL": redis.url,
                # Its usage spool goes with the logs, never into the project's .data (a later gateway would replay it).
                "GATEWAY_DATA_DIR": str(logs / "data"),
                "GATEWAY_FAL_BASE_URL": sims_urls["fal"],
                "GATEWAY_REPLICATE_BASE_URL": sims_urls["replicate"],
                "FAL_KEY": FAL_KEY,
                "REPLICATE_API_TOKEN": REPLICATE_KEY,
                "GATEWAY_PROVIDER_INITIAL_POLL_INTERVAL_S": "0.005",
                "GATEWAY_PROVIDER_MAX_POLL_INTERVAL_S": "0.02",
                "GATEWAY_LOG_LEVEL": "warning",
                **gateway_env,
            },
            log_dir=logs,
        )
        with sims, gateway:
            yield sims_urls, f"http://127.0.0.1:{gateway_port}", gateway.pid
