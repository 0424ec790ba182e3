"""The failover scenario: every request's first provider fails, so each one fails over to the second."""

from __future__ import annotations

import argparse
import time

import httpx

from bench.stack import ADMIN_KEY, FAL_KEY, closed_loop, summary
from gateway.catalog import Catalog
from gateway.settings import PROJECT_ROOT
from gateway.types import ImageRequest, Mode
from providers import ProviderEndpoint, adapter_class


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
