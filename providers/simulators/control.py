"""What both simulators share: scripted latency and faults, call statistics, and the /_sim control routes.

Control routes (no auth: they are a local test tool, never exposed by a real provider):

    GET    /_sim/stats    {"calls": {op: n}, "cancels": n, "jobs": [{"id","model","status","fault","input"}]}
    GET    /_sim/config   {"queue_ms": n, "run_ms": n}
    POST   /_sim/config   partial {"queue_ms", "run_ms"}: latency for jobs submitted from now on
    GET    /_sim/faults   {"faults": [...]} still pending
    POST   /_sim/faults   {"kind", "on": op | "any", "times": n | null, "retry_after": s}: append a fault
    DELETE /_sim/faults   clear all faults
    POST   /_sim/reset    clear jobs, stats, faults and render cache; restore the start-up latency

Faults are consumed in the order they were added, each by the first authenticated call whose op matches
(`on`); `times: null` (or omitted) keeps a fault until cleared. Job-level kinds (validation, model_error,
nsfw, stuck) are decided when a job is submitted, so they match only the submit op (fal `submit`,
Replicate `create`). A call that fails authentication consumes no fault. `cancels` counts jobs that a
client's cancel actually stopped (cancelling a finished job does not count). `jobs` lists the most recent
1000 jobs, oldest first, with each data: URI in the input replaced by {"format","width","height","bytes"}.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive

from providers.simulators.jobs import Job, JobStore
from providers.simulators.render import RenderCache

ANY_OP = "any"


class FaultKind(enum.StrEnum):
    """Every failure a simulator can be told to produce."""

    HTTP_500 = "http_500"
    HTTP_503 = "http_503"
    HTTP_429 = "http_429"
    HANG = "hang"
    MALFORMED = "malformed"
    VALIDATION = "validation"
    MODEL_ERROR = "model_error"
    NSFW = "nsfw"
    STUCK = "stuck"

    @property
    def job_level(self) -> bool:
        """Decided at submit time and carried by the job, rather than replacing one HTTP answer."""
        return self in _JOB_LEVEL


_JOB_LEVEL = frozenset({FaultKind.VALIDATION, FaultKind.MODEL_ERROR, FaultKind.NSFW, FaultKind.STUCK})


@dataclass(slots=True)
class Fault:
    """One scripted fault; `times` counts down as calls consume it (None: until cleared)."""

    kind: FaultKind
    on: str = ANY_OP
    times: int | None = None
    retry_after: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse the CLI form KIND[:OP[:TIMES]]; omitted TIMES means until cleared."""
        kind, _, rest = text.partition(":")
        on, _, times = rest.partition(":")
        return cls.from_json({"kind": kind, "on": on or ANY_OP, "times": int(times) if times else None})

    @classmethod
    def from_json(cls, body: object) -> Fault:
        """Validate a POST /_sim/faults body; ValueError names the bad field."""
        if not isinstance(body, dict):
            raise ValueError("fault must be a JSON object")
        unknown = set(body) - {"kind", "on", "times", "retry_after"}
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        try:
            kind = FaultKind(body.get("kind"))
        except ValueError:
            raise ValueError(f"kind must be one of {', '.join(k.value for k in FaultKind)}") from None
        on = body.get("on", ANY_OP)
        times = body.get("times")
        retry_after = body.get("retry_after", 1.0)
        if not isinstance(on, str) or not on:
            raise ValueError("on must be an op name or 'any'")
        if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
            raise ValueError("times must be a positive integer or null")
        if not isinstance(retry_after, int | float) or isinstance(retry_after, bool) or retry_after < 0:
            raise ValueError("retry_after must be a non-negative number of seconds")
        return cls(kind, on, times, float(retry_after))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "on": self.on, "times": self.times, "retry_after": self.retry_after}


class FaultScript:
    """The pending faults of one simulator, consumed in order by matching ops."""

    def __init__(self, ops: Sequence[str], submit_op: str) -> None:
        self.ops = tuple(ops)
        self.submit_op = submit_op
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        if fault.on != ANY_OP and fault.on not in self.ops:
            raise ValueError(f"on must be 'any' or one of {', '.join(self.ops)}")
        if fault.kind.job_level and fault.on not in (ANY_OP, self.submit_op):
            raise ValueError(f"{fault.kind.value} is decided at submit time: use on '{self.submit_op}' or 'any'")
        self._faults.append(replace(fault))  # a copy: the caller's Fault may be added to another simulator

    def take(self, op: str) -> Fault | None:
        """Consume and return the first pending fault that applies to `op`, if any."""
        for index, fault in enumerate(self._faults):
            if fault.on not in (ANY_OP, op) or (fault.kind.job_level and op != self.submit_op):
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times == 0:
                    del self._faults[index]
            return fault
        return None

    def clear(self) -> None:
        self._faults.clear()

    def to_json(self) -> list[dict[str, Any]]:
        return [fault.to_json() for fault in self._faults]


@dataclass(frozen=True, slots=True)
class Latency:
    """How long new jobs wait in the queue and then run."""

    queue_ms: int
    run_ms: int

    def to_json(self) -> dict[str, int]:
        return {"queue_ms": self.queue_ms, "run_ms": self.run_ms}


def json_response(
    content: Any,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    media_type: str = "application/json",
) -> Response:
    """A JSON response encoded with orjson (several times faster than the stdlib on the hot path)."""
    return Response(orjson.dumps(content), status_code, headers=dict(headers or {}), media_type=media_type)


async def _until_disconnect(receive: Receive) -> None:
    # Once the request body has been read, the server's next message is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


class SimulatorControl:
    """One simulator's mutable state (latency, faults, stats, jobs, renders) and the /_sim routes."""

    def __init__(
        self,
        *,
        ops: Sequence[str],
        submit_op: str,
        latency: Latency,
        faults: Sequence[Fault] = (),
        max_jobs: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ops = tuple(ops)
        self.startup_latency = latency
        self.latency = latency
        self.faults = FaultScript(ops, submit_op)
        for fault in faults:
            self.faults.add(fault)
        self.calls: Counter[str] = Counter()
        self.cancels = 0
        self.jobs = JobStore(max_jobs)
        self.renders = RenderCache()
        self.clock = clock
        # Set to release every held request (hangs, Prefer: wait); replaced on reset, set for good on close.
        self._release = asyncio.Event()

    def now(self) -> float:
        return self.clock()

    def count(self, op: str) -> None:
        self.calls[op] += 1

    def reset(self) -> None:
        """Back to start-up latency with no jobs, stats or faults (start-up faults are cleared too)."""
        self.latency = self.startup_latency
        self.faults.clear()
        self.calls.clear()
        self.cancels = 0
        self.jobs.clear()
        self.renders.clear()
        self._release.set()
        self._release = asyncio.Event()

    def close(self) -> None:
        """Release held requests so the server can shut down without waiting for them."""
        self._release.set()

    async def hold(
        self, seconds: float | None, *, receive: Receive | None = None, wake: asyncio.Event | None = None
    ) -> None:
        """Sleep up to `seconds` (None: no limit), ending early on disconnect, `wake`, reset or close."""
        waiters = [asyncio.ensure_future(self._release.wait())]
        if receive is not None:
            waiters.append(asyncio.ensure_future(_until_disconnect(receive)))
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def routes(self, describe: Callable[[Job, float], str]) -> list[Route]:
        """The /_sim routes; `describe(job, now)` names a job's status in the provider's words."""

        async def stats(request: Request) -> Response:
            now = self.now()
            return json_response(
                {
                    "calls": {op: self.calls[op] for op in self.ops},
                    "cancels": self.cancels,
                    "jobs": [
                        {
                            "id": job.id,
                            "model": job.model,
                            "status": describe(job, now),
                            "fault": job.fault.value if job.fault else None,
                            "input": job.input_summary,
                        }
                        for job in self.jobs.recent()
                    ],
                }
            )

        async def config(request: Request) -> Response:
            if request.method == "POST":
                body = await _json_body(request)
                if isinstance(body, Response):
                    return body
                if not isinstance(body, dict) or set(body) - {"queue_ms", "run_ms"}:
                    return json_response({"detail": "config takes only queue_ms and run_ms"}, 400)
                if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in body.values()):
                    return json_response({"detail": "queue_ms and run_ms must be non-negative integers"}, 400)
                self.latency = replace(self.latency, **body)
            return json_response(self.latency.to_json())

        async def faults(request: Request) -> Response:
            if request.method == "DELETE":
                self.faults.clear()
            elif request.method == "POST":
                body = await _json_body(request)
                if isinstance(body, Response):
                    return body
                try:
                    self.faults.add(Fault.from_json(body))
                except ValueError as exc:
                    return json_response({"detail": str(exc)}, 400)
            return json_response({"faults": self.faults.to_json()})

        async def reset(request: Request) -> Response:
            self.reset()
            return json_response({"reset": True})

        return [
            Route("/_sim/stats", stats, methods=["GET"]),
            Route("/_sim/config", config, methods=["GET", "POST"]),
            Route("/_sim/faults", faults, methods=["GET", "POST", "DELETE"]),
            Route("/_sim/reset", reset, methods=["POST"]),
        ]


async def _json_body(request: Request) -> Any:
    """The parsed JSON body, or a 400 response saying it is not JSON."""
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return json_response({"detail": "body must be JSON"}, 400)


async def hang_response(control: SimulatorControl, request: Request, max_seconds: float) -> Response:
    """The `hang` fault: read the request, then answer nothing until the client goes away."""
    await request.body()
    await control.hold(max_seconds, receive=request.receive)
    # Only reached on reset, shutdown or after max_seconds; the client has usually gone by then.
    return json_response({"detail": "simulated hang released"}, 504)


def malformed_response(binary: bool = False) -> Response:
    """The `malformed` fault: a 200 whose body is not what the client expects."""
    if binary:
        return Response(b"this is not an image", media_type="image/png")
    return Response(b'{"request_id": "', media_type="application/json")  # truncated, invalid JSON
