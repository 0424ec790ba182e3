"""Gateway benchmarks: overhead against the simulators called directly, failover, and requests held in flight.

`python -m bench [--requests N] [--concurrency C] [--provider replicate|fal]`
`python -m bench --scenario failover [--fault http_500] [--breaker held|default]`
`python -m bench --scenario inflight [--inflight 10000] [--provider-pool 1000] [--drain-s 240] [--log-dir DIR]`

The baseline ("direct") speaks the provider protocol from this process with the gateway's own adapter, so
both paths make the same provider round trips; "via" sends OpenAI-shaped requests to a gateway process.
Results are ratios within one run (machines are noisy): added p50/p99 latency, throughput ratio, and the
gateway's CPU milliseconds per request read from /proc. "inflight" holds N slow requests open against one
gateway worker and reports its memory, CPU and file descriptors, then how it cancels the provider jobs
when every client leaves. Only loopback addresses are used, and every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bench.failover import failover
from bench.inflight import DEFAULT_RUN_MS, GATEWAY_ENV, gateway_log_summary, inflight
from bench.overhead import overhead
from bench.stack import stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scenario", choices=("overhead", "failover", "inflight"), default="overhead")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--provider", choices=("replicate", "fal"), default="replicate")
    parser.add_argument(
        "--run-ms", type=int, default=0, help=f"simulated provider run time (inflight: 0 means {DEFAULT_RUN_MS})"
    )
    parser.add_argument("--fault", default="http_500", help="failover: the fault the first provider answers with")
    parser.add_argument(
        "--breaker",
        choices=("held", "default"),
        default="held",
        help="failover: 'held' keeps the breaker closed so every request fails over; 'default' lets it eject",
    )
    parser.add_argument("--inflight", type=int, default=10_000, help="inflight: requests held open at once")
    parser.add_argument(
        "--drain-s", type=float, default=240, help="inflight: how long to watch the cancels once clients leave"
    )
    parser.add_argument(
        "--provider-pool",
        type=int,
        default=1000,
        help="inflight: the gateway's provider connection pool (GATEWAY_PROVIDER_MAX_CONNECTIONS)",
    )
    parser.add_argument("--log-dir", type=Path, help="keep the gateway's and simulators' logs here")
    args = parser.parse_args(argv)
    gateway_env = {}
    if args.scenario == "failover" and args.breaker == "held":
        gateway_env = {"GATEWAY_BREAKER_CONSECUTIVE_FAILURES": "1000000", "GATEWAY_BREAKER_MIN_REQUESTS": "1000000"}
    if args.scenario == "inflight":
        gateway_env = {**GATEWAY_ENV, "GATEWAY_PROVIDER_MAX_CONNECTIONS": str(args.provider_pool)}
        args.run_ms = args.run_ms or DEFAULT_RUN_MS
    with tempfile.TemporaryDirectory(prefix="flux-bench-logs-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        with stack(args.run_ms, log_dir, **gateway_env) as (sims_urls, gateway_url, gateway_pid):
            if args.scenario == "failover":
                result = asyncio.run(failover(args, sims_urls, gateway_url))
            elif args.scenario == "inflight":
                result = asyncio.run(inflight(args, sims_urls, gateway_url, gateway_pid))
            else:
                result = asyncio.run(overhead(args, sims_urls, gateway_url, gateway_pid))
        if args.scenario == "inflight":
            result["gateway_log"] = gateway_log_summary(log_dir / "gateway.log")
    print(json.dumps(result, indent=2))
    if result.get("problems"):
        print("inflight: " + "; ".join(result["problems"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
