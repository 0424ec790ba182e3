"""The overhead scenario: the same image requests, direct to a simulator and through the gateway."""

from __future__ import annotations

import argparse
import time

import httpx

from bench.stack import ADMIN_KEY, FAL_KEY, REPLICATE_KEY, closed_loop, cpu_seconds, summary
from gateway.catalog import Catalog
from gateway.settings import PROJECT_ROOT
from gateway.types import ImageRequest, Mode
from providers import ProviderEndpoint, adapter_class


async def overhead(args: argparse.Namespace, sims_urls: dict[str, str], gateway_url: str, gateway_pid: int) -> dict:
    """Added latency, throughput ratio and gateway CPU per request, against the provider called directly."""
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
