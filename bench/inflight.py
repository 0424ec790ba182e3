"""The inflight scenario: one gateway worker holds N slow requests open; what does each one cost it?

N raw loopback connections each send one image request for Replicate, whose adapter holds the create open
with `Prefer: wait` (nothing to poll), and then only listen. Requests beyond the gateway's provider pool
(GATEWAY_PROVIDER_MAX_CONNECTIONS) wait inside the gateway for a pooled connection: still in flight for
their client, still costing gateway memory. Once the gateway has taken everything in, its RSS, CPU and
file descriptors are read from /proc and the simulator's stats say how many predictions it holds. Then
every client leaves at once, and the scenario watches the gateway cancel the predictions it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.stack import ADMIN_KEY, cpu_seconds

MODEL = "replicate/flux.2-klein-4b"
DEADLINE_S = 300  # x-gateway-timeout; the gateway's cap (GATEWAY_MAX_REQUEST_TIMEOUT_S) by default
PREFER_WAIT_S = 60  # the Replicate adapter's `Prefer: wait`: creates answer "starting" after it, then polls start
DEFAULT_RUN_MS = 120_000  # longer than any create is held, so no prediction finishes while we watch
BATCH = 500  # connections opened at once, well inside uvicorn's listen backlog (2048)
# The next batch waits until the gateway has accepted most of the last: a full listen queue drops handshakes,
# and the client then holds a socket the gateway never sees (the kernel resets it later).
QUEUE_LOW_WATER = 512
# Everything is measured inside the first create's hold: no batch starts after RAMP_LIMIT_S, and the gateway
# is read at SETTLE_LIMIT_S at the latest, even if it is still taking requests in.
RAMP_LIMIT_S = PREFER_WAIT_S - 15
SETTLE_LIMIT_S = PREFER_WAIT_S - 5
EARLY_ANSWER_TOLERANCE = 5
# Production poll intervals: the stack's fast bench defaults would make any past-the-hold poll a CPU storm.
GATEWAY_ENV = {"GATEWAY_PROVIDER_INITIAL_POLL_INTERVAL_S": "0.05", "GATEWAY_PROVIDER_MAX_POLL_INTERVAL_S": "1.0"}
MiB = 1024 * 1024
GiB = 1024 * MiB
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")  # the gateway's own loggers
_UVICORN_LINE = re.compile(r"^(WARNING|ERROR|CRITICAL): ")  # uvicorn's, e.g. "Exception in ASGI application"
_IDS = re.compile(r"req_[0-9a-f]{32}|\b[a-z0-9]{26}\b")


class Held(asyncio.Protocol):
    """One client: sends its request once connected, then only listens; any answer before it leaves is early."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.answer: bytes | None = None  # first line of an early answer
        self.closed_by_peer = False
        self.leaving = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.answer is None:
            self.answer = data.split(b"\r\n", 1)[0][:80]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.leaving:
            self.closed_by_peer = True

    @property
    def early(self) -> bool:
        return self.answer is not None or self.closed_by_peer

    def leave(self) -> None:
        self.leaving = True
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class Sockets:
    """The gateway's file descriptors and TCP connections, from /proc."""

    fds: int
    inbound: int  # client connections the gateway process has accepted (any state but LISTEN)
    queued: int  # client connections in the listen socket's accept queue, not yet accepted
    provider: int  # the gateway's connections to the Replicate simulator


def sockets(pid: int, gateway_port: int, provider_port: int) -> Sockets:
    """Match the gateway's socket fds against /proc/net/tcp (loopback is IPv4 here)."""
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    inodes = set()
    for name in names:
        with contextlib.suppress(OSError):  # an fd closed between listdir and readlink
            link = os.readlink(f"{fd_dir}/{name}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    inbound = queued = provider = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port, remote_port = int(fields[1][-4:], 16), int(fields[2][-4:], 16)
            state, inode = fields[3], fields[9]
            if local_port == gateway_port and state == "0A":
                queued += int(fields[4].split(":")[1], 16)  # a listener's rx_queue is its accept queue
            elif local_port == gateway_port and inode in inodes:
                inbound += 1
            elif remote_port == provider_port and inode in inodes:
                provider += 1
    return Sockets(len(names), inbound, queued, provider)


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the listener on `port` (its rx_queue in /proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                return int(fields[4].split(":")[1], 16)
    return 0


def listen_overflows() -> int:
    """The kernel's count of handshakes dropped because an accept queue was full (TcpExt ListenOverflows)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def simulators_pid() -> int | None:
    """The simulators' process, a child of this one (the stack yields only the gateway's pid)."""
    for task in os.listdir("/proc/self/task"):
        for pid in Path(f"/proc/self/task/{task}/children").read_text().split():
            with contextlib.suppress(OSError):
                if b"providers.simulators" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
    return None


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) in KiB, from /proc/<pid>/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def http_request(host: str, port: int, index: int) -> bytes:
    """A complete HTTP/1.1 image request; prompts differ so nothing could be served from a cache."""
    body = json.dumps({"model": MODEL, "prompt": f"a lighthouse, take {index}", "size": "1024x1024"}).encode()
    head = (
        f"POST /v1/images/generations HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nx-gateway-timeout: {DEADLINE_S}\r\n\r\n"
    )
    return head.encode() + body


async def sim_stats(client: httpx.AsyncClient, sim_url: str) -> dict:
    response = await client.get(f"{sim_url}/_sim/stats")
    response.raise_for_status()
    return response.json()


async def warm_up(gateway_url: str, sim_url: str) -> None:
    """A few complete requests (run time 0 for them), so idle RSS already has every code path loaded."""
    # A client of its own, closed afterwards, so none of its keep-alive connections counts as held later.
    async with httpx.AsyncClient(timeout=30) as client:
        (await client.post(f"{sim_url}/_sim/config", json={"run_ms": 0})).raise_for_status()
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        body = {"model": MODEL, "prompt": "a lighthouse", "size": "1024x1024"}
        for _ in range(3):
            answers = await asyncio.gather(
                *(client.post(f"{gateway_url}/v1/images/generations", json=body, headers=headers) for _ in range(10))
            )
            for answer in answers:
                answer.raise_for_status()
        # Back to the start-up run time, with the warm-up's calls and jobs forgotten.
        (await client.post(f"{sim_url}/_sim/reset")).raise_for_status()


@dataclass(frozen=True, slots=True)
class Probe:
    """Reads the gateway (/proc) and the Replicate simulator (/_sim/stats) in one go."""

    client: httpx.AsyncClient
    sim_url: str
    gateway_pid: int
    sims_pid: int | None
    port: int
    provider_port: int

    async def sample(self, since: float) -> dict:
        stats = await sim_stats(self.client, self.sim_url)
        sk = sockets(self.gateway_pid, self.port, self.provider_port)
        return {
            "t_s": round(time.monotonic() - since, 1),
            "accepted": sk.inbound,
            "accept_queue": sk.queued,
            "created": stats["calls"]["create"],
            "cancel_calls": stats["calls"]["cancel"],
            "cancelled": stats["cancels"],
            "polls": stats["calls"]["get"],
            "provider_sockets": sk.provider,
            "fds": sk.fds,
            "rss_mib": mib(memory_kib(self.gateway_pid)["VmRSS"]),
            "gateway_cpu_s": round(cpu_seconds(self.gateway_pid), 2),
            "sim_cpu_s": round(cpu_seconds(self.sims_pid), 2) if self.sims_pid else None,
        }


async def ramp(
    probe: Probe, held: list[Held], host: str, started: float, timeline: list[dict]
) -> tuple[int, Counter[str]]:
    """Connect and send requests in batches, each once the gateway's accept queue has drained; (sent, errors).

    Stops early, with fewer than all sent, if the gateway is still not keeping up RAMP_LIMIT_S in.
    """
    loop = asyncio.get_running_loop()
    errors: Counter[str] = Counter()
    for first in range(0, len(held), BATCH):
        while accept_queue(probe.port) > QUEUE_LOW_WATER:  # polled: a kernel queue length has no event
            if time.monotonic() >= started + RAMP_LIMIT_S:
                return first, errors
            await asyncio.sleep(0.05)
        opened = await asyncio.gather(
            *(loop.create_connection(lambda h=h: h, host, probe.port) for h in held[first : first + BATCH]),
            return_exceptions=True,
        )
        errors.update(type(o).__name__ for o in opened if isinstance(o, BaseException))
        if (first // BATCH) % 2 == 1:
            timeline.append({"sent": first + len(opened), **await probe.sample(started)})
    return len(held), errors


async def settle(probe: Probe, started: float, timeline: list[dict]) -> tuple[float, bool]:
    """Wait until creates, accepted connections and gateway CPU are still; (time of last change, settled)."""
    last, last_change, quiet_since, cpu_then = None, time.monotonic(), None, cpu_seconds(probe.gateway_pid)
    next_sample = time.monotonic() + 5
    while time.monotonic() < started + SETTLE_LIMIT_S:
        await asyncio.sleep(0.5)
        now, cpu_now, sample = time.monotonic(), cpu_seconds(probe.gateway_pid), await probe.sample(started)
        if now >= next_sample:
            timeline.append(sample)
            next_sample = now + 5
        state = (sample["created"], sample["accepted"], sample["accept_queue"])
        if state != last:
            last, last_change, quiet_since = state, now, None
        elif cpu_now - cpu_then < 0.05 and sample["accept_queue"] == 0:  # under 10% of a core for 0.5 s
            quiet_since = quiet_since or now
            if now - quiet_since >= 2:
                return last_change, True
        else:
            quiet_since = None
        cpu_then = cpu_now
    return last_change, False


async def drain(probe: Probe, left: float, limit_s: float, timeline: list[dict]) -> dict:
    """After the clients left: sample until every created prediction is cancelled, or nothing moves for long."""
    last, last_change, next_sample = None, left, left
    while True:
        await asyncio.sleep(1)
        now, sample = time.monotonic(), await probe.sample(left)
        if now >= next_sample:
            timeline.append(sample)
            next_sample = now + 10
        state = (sample["created"], sample["cancelled"], sample["accepted"])
        if state != last:
            last, last_change = state, now
        done = state[0] == state[1] and state[2] == 0 and now - last_change >= 5
        # A create answers within a Prefer hold, and its cancel 2 s later: past that, nothing else is coming.
        stalled = now - last_change >= PREFER_WAIT_S + 15
        if done or stalled or now - left >= limit_s:
            timeline.append(sample)
            return sample


async def inflight(args: argparse.Namespace, sims_urls: dict[str, str], gateway_url: str, gateway_pid: int) -> dict:
    """Gateway memory, CPU and fds with `args.inflight` requests held open, then the cancels as they all leave."""
    n = args.inflight
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one fd per held connection, here as well
    gateway = urlsplit(gateway_url)
    host, port = gateway.hostname or "127.0.0.1", gateway.port or 80
    sim_url = sims_urls["replicate"]
    problems: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        probe = Probe(client, sim_url, gateway_pid, simulators_pid(), port, urlsplit(sim_url).port or 80)
        cold = memory_kib(gateway_pid)
        await warm_up(gateway_url, sim_url)
        idle, idle_fds = memory_kib(gateway_pid), len(os.listdir(f"/proc/{gateway_pid}/fd"))
        held = [Held(http_request(host, port, i)) for i in range(n)]
        ramp_timeline: list[dict] = []
        overflows_before, cpu_start, started = listen_overflows(), cpu_seconds(gateway_pid), time.monotonic()
        sent, connect_errors = await ramp(probe, held, host, started, ramp_timeline)
        written_s = time.monotonic() - started
        last_change, settled = await settle(probe, started, ramp_timeline)
        ramp_cpu_s = cpu_seconds(gateway_pid) - cpu_start

        loaded, loaded_sockets = memory_kib(gateway_pid), sockets(gateway_pid, port, probe.provider_port)
        held_stats = await sim_stats(client, sim_url)
        measured_at_s = time.monotonic() - started
        overflows = listen_overflows() - overflows_before
        early = [h for h in held if h.early]
        early_lines = Counter((h.answer or b"(closed by the server side, no answer)").decode() for h in early)

        # Every client leaves at once; the gateway should cancel each prediction it started.
        for h in held:
            h.leave()
        left = time.monotonic()
        drain_cpu_start = cpu_seconds(gateway_pid)
        drain_timeline: list[dict] = []
        final = await drain(probe, left, args.drain_s, drain_timeline)
        drain_s = time.monotonic() - left
        drain_cpu_s = cpu_seconds(gateway_pid) - drain_cpu_start
        after = memory_kib(gateway_pid)
        statuses = Counter(job["status"] for job in (await sim_stats(client, sim_url))["jobs"])

    if sent < n:
        problems.append(f"sent {sent} of {n}: the gateway's accept queue was still full {RAMP_LIMIT_S} s in")
    if not settled:
        problems.append(f"the gateway was still taking requests {SETTLE_LIMIT_S} s in; measured anyway")
    if len(early) > EARLY_ANSWER_TOLERANCE:
        problems.append(f"{len(early)} requests were answered or closed early: {dict(early_lines)}")
    if sum(connect_errors.values()) > EARLY_ANSWER_TOLERANCE:
        problems.append(f"connections failed: {dict(connect_errors)}")
    if held_stats["calls"]["get"]:
        problems.append(f"measured past the {PREFER_WAIT_S} s Prefer hold: creates had answered and polls began")
    created, cancelled = final["created"], final["cancelled"]
    if created != cancelled:
        problems.append(f"{created - cancelled} of {created} predictions were not cancelled within {drain_s:.0f} s")
    accepted = loaded_sockets.inbound
    created_held = held_stats["calls"]["create"]
    added = (loaded["VmRSS"] - idle["VmRSS"]) * 1024
    return {
        "n": n,
        "provider_pool": args.provider_pool,
        "run_ms": args.run_ms,
        "sent": sent,
        "connect_errors": dict(connect_errors),
        "accepted": accepted,
        "in_accept_queue": loaded_sockets.queued,
        "listen_overflows": overflows,
        "early_answers": len(early),
        "early_answer_lines": dict(early_lines),
        "provider_connections": created_held,
        "provider_sockets": loaded_sockets.provider,
        "waiting_for_pool": accepted - created_held,  # accepted, but no create reached the provider yet
        "polls_during_hold": held_stats["calls"]["get"],
        "idle_cold_rss_mib": mib(cold["VmRSS"]),
        "idle_rss_mib": mib(idle["VmRSS"]),
        "loaded_rss_mib": mib(loaded["VmRSS"]),
        "peak_rss_mib": mib(loaded["VmHWM"]),
        "bytes_per_request": round(added / max(accepted, 1)),
        "written_s": round(written_s, 2),
        "ramp_s": round(last_change - started, 2),
        "ramp_cpu_s": round(ramp_cpu_s, 2),
        "measured_at_s": round(measured_at_s, 1),
        "idle_fds": idle_fds,
        "gateway_fds": loaded_sockets.fds,
        "created": created,
        "cancel_calls": final["cancel_calls"],
        "cancelled": cancelled,
        "drain_s": round(drain_s, 1),
        "drain_cpu_s": round(drain_cpu_s, 2),
        "sim_job_statuses_last_1000": dict(statuses),
        "rss_after_disconnect_mib": mib(after["VmRSS"]),
        "peak_rss_end_mib": mib(after["VmHWM"]),
        "fds_after_disconnect": final["fds"],
        "under_1_gib": loaded["VmHWM"] * 1024 < GiB and accepted >= n - EARLY_ANSWER_TOLERANCE,
        "problems": problems,
        "ramp_timeline": ramp_timeline,
        "drain_timeline": drain_timeline,
    }


def gateway_log_summary(log: Path, limit: int = 6) -> dict:
    """The gateway's log lines (warning and above in the bench) grouped by message, ids masked."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    logged = [line for line in lines if _LOG_LINE.match(line) or _UVICORN_LINE.match(line)]  # not the banner
    shapes = Counter(_IDS.sub("<id>", _LOG_LINE.sub("", line)) for line in logged)
    return {
        "lines": len(logged),
        "by_message": dict(shapes.most_common(limit)),
        "first": logged[0] if logged else None,
        "last": logged[-1] if logged else None,
    }
