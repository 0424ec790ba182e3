"""Gateway overhead benchmark: the same image requests, direct to the simulators and through the gateway.

`python -m bench [--requests N] [--concurrency C] [--provider replicate|fal]`
`python -m bench --scenario failover [--fault http_500] [--breaker held|default]`

The baseline ("direct") speaks the provider protocol from this process with the gateway's own adapter, so
both paths make the same provider round trips; "via" sends OpenAI-shaped requests to a gateway process.
Results are ratios within one run (machines are noisy): added p50/p99 latency, throughput ratio, and the
gateway's CPU milliseconds per request read from /proc. Only loopback addresses are used, and every
process started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx

from gateway.catalog import Catalog
from gateway.child_server import ChildServer, python_module
from gateway.redis_server import EmbeddedRedis, free_port
from gateway.settings import PROJECT_ROOT
from gateway.types import ImageRequest, Mode
from providers import ProviderEndpoint, adapter_class

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


async def run(args: argparse.Namespace, sims_urls: dict[str, str], gateway_url: str, gateway_pid: int) -> dict:
    catalog = Catalog.from_yaml(PROJECT_ROOT / "config" / "models.yaml")
    deployment = next(d for d in catalog.deployments if d.key == f"{args.provider}/flux.2-klein-4b")
    endpoint = ProviderEndpoint(
        base_url=sims_urls[args.provider],
        api_key=FAL_KEY if args.provider == "fal" else REPLICATE_KEY,
        initial_poll_interval=0.005,
        max_poll_interval=0.02,
    )
    adapter = adapter_class(args.provider)(endpoint)
    body = {"model": deployment.key, "prompt": "a lighthouse", "size": "1024x1024"}
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    results: dict[str, dict] = {}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=args.concurrency * 2), timeout=60) as client:

        async def direct() -> None:
            request = ImageRequest(f"bench-{time.perf_counter_ns()}", Mode.GENERATE, "a lighthouse", 1024, 1024)
            await adapter.generate(deployment, request)

        async def via() -> None:
            response = await client.post(f"{gateway_url}/v1/images/generations", json=body, headers=headers)
            response.raise_for_status()

        for name, call in (("direct", direct), ("via", via)):
            await closed_loop(call, max(args.concurrency, args.requests // 10), args.concurrency)  # warm-up
            cpu_before = cpu_seconds(gateway_pid)
            started = time.perf_counter()
            latencies = await closed_loop(call, args.requests, args.concurrency)
            wall = time.perf_counter() - started
            results[name] = summary(name, latencies, wall)
            results[name]["gateway_cpu_ms_per_req"] = round(
                (cpu_seconds(gateway_pid) - cpu_before) * 1000 / len(latencies), 3
            )
    await adapter.aclose()
    d, v = results["direct"], results["via"]
    return {
        "provider": args.provider,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "direct": d,
        "via": v,
        "added_p50_ms": round(v["p50_ms"] - d["p50_ms"], 3),
        "added_p99_ms": round(v["p99_ms"] - d["p99_ms"], 3),
        "rps_ratio": round(v["rps"] / d["rps"], 3),
        "gateway_cpu_ms_per_req": v["gateway_cpu_ms_per_req"],
    }


@contextlib.contextmanager
def stack(run_ms: int, **gateway_env: str) -> Iterator[tuple[dict[str, str], str, int]]:
    """Redis, both simulators and one gateway, on loopback; yields (simulator URLs, gateway URL, gateway pid)."""
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
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
            log_dir=Path(tmp),
        )
        gateway = ChildServer(
            "gateway",
            python_module("gateway", "serve", "--port", str(gateway_port)),
            [f"http://127.0.0.1:{gateway_port}/readyz"],
            env={
                "GATEWAY_ADMIN_KEY": ADMIN_KEY,
                "GATEWAY_REDIS_URL": redis.url,
                "GATEWAY_FAL_BASE_URL": sims_urls["fal"],
                "GATEWAY_REPLICATE_BASE_URL": sims_urls["replicate"],
                "FAL_KEY": FAL_KEY,
                "REPLICATE_API_TOKEN": REPLICATE_KEY,
                "GATEWAY_PROVIDER_INITIAL_POLL_INTERVAL_S": "0.005",
                "GATEWAY_PROVIDER_MAX_POLL_INTERVAL_S": "0.02",
                "GATEWAY_LOG_LEVEL": "warning",
                **gateway_env,
            },
            log_dir=Path(tmp),
        )
        with sims, gateway:
            yield sims_urls, f"http://127.0.0.1:{gateway_port}", gateway.pid


async def failover(args: argparse.Namespace, sims_urls: dict[str, str], gateway_url: str) -> dict:
    """Latency of requests whose first provider (Replicate, the cheaper) fails, against fal called directly."""
    catalog = Catalog.from_yaml(PROJECT_ROOT / "config" / "models.yaml")
    fal_deployment = next(d for d in catalog.deployments if d.key == "fal/flux.2-klein-4b")
    fal = adapter_class("fal")(
        ProviderEndpoint(sims_urls["fal"], FAL_KEY, initial_poll_interval=0.005, max_poll_interval=0.02)
    )
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"model": "flux.2-klein-4b", "prompt": "a lighthouse", "size": "1024x1024"}
    async with httpx.AsyncClient(timeout=60) as client:
        fault = {"kind": args.fault, "on": "create", "times": None}
        (await client.post(f"{sims_urls['replicate']}/_sim/faults", json=fault)).raise_for_status()

        async def direct_fal() -> None:
            request = ImageRequest(f"bench-{time.perf_counter_ns()}", Mode.GENERATE, "a lighthouse", 1024, 1024)
            await fal.generate(fal_deployment, request)

        async def via() -> None:
            response = await client.post(f"{gateway_url}/v1/images/generations", json=body, headers=headers)
            response.raise_for_status()
            assert response.headers["x-gateway-provider"] == "fal/flux.2-klein-4b"

        results = {}
        for name, call in (("direct_fal", direct_fal), ("via_failover", via)):
            await closed_loop(call, 10, 1)
            started = time.perf_counter()
            latencies = await closed_loop(call, args.requests, 1)
            results[name] = summary(name, latencies, time.perf_counter() - started)
    await fal.aclose()
    return {
        "scenario": f"first provider answers {args.fault} on every request",
        "breaker": args.breaker,
        **results,
        "failover_added_p50_ms": round(results["via_failover"]["p50_ms"] - results["direct_fal"]["p50_ms"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scenario", choices=("overhead", "failover"), default="overhead")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--provider", choices=("replicate", "fal"), default="replicate")
    parser.add_argument("--run-ms", type=int, default=0, help="simulated provider run time")
    parser.add_argument("--fault", default="http_500", help="failover: the fault the first provider answers with")
    parser.add_argument(
        "--breaker",
        choices=("held", "default"),
        default="held",
        help="failover: 'held' keeps the breaker closed so every request fails over; 'default' lets it eject",
    )
    args = parser.parse_args(argv)
    gateway_env = {}
    if args.scenario == "failover" and args.breaker == "held":
        gateway_env = {"GATEWAY_BREAKER_CONSECUTIVE_FAILURES": "1000000", "GATEWAY_BREAKER_MIN_REQUESTS": "1000000"}
    with stack(args.run_ms, **gateway_env) as (sims_urls, gateway_url, gateway_pid):
        if args.scenario == "failover":
            result = asyncio.run(failover(args, sims_urls, gateway_url))
        else:
            result = asyncio.run(run(args, sims_urls, gateway_url, gateway_pid))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
