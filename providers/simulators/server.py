"""Run the fal and Replicate simulators together: in this event loop (`serve`), in a background thread
for tests (`SimulatorThread`), or from the command line (`main`, i.e. `python -m providers.simulators`).

Each simulator is its own uvicorn server on its own port (access log off, log level warning). Sockets are
bound before the servers start, so port 0 works and the URLs are known up front.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

import httpx
import uvicorn

from providers.simulators import fal, replicate
from providers.simulators.control import ANY_OP, Fault, FaultKind
from providers.simulators.fal import FalSimulator
from providers.simulators.replicate import ReplicateSimulator

DEFAULT_FAL_KEY = "sim-fal-local-key"
DEFAULT_REPLICATE_KEY = "sim-replicate-local-key"
# Long enough for a normal response to finish; held requests (hang, Prefer: wait) are released first.
GRACEFUL_SHUTDOWN_S = 2.0


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to `serve`: two servers share one process and one loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only then, and without
    # it every small response stalls ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(4096)  # listen now: connections made before uvicorn starts wait in the backlog
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def split_faults(faults: Sequence[Fault | str]) -> tuple[tuple[Fault, ...], tuple[Fault, ...]]:
    """Route start-up faults by op: fal-only ops to fal, Replicate-only ops to Replicate, shared to both."""
    to_fal: list[Fault] = []
    to_replicate: list[Fault] = []
    for item in faults:
        fault = Fault.parse(item) if isinstance(item, str) else item
        known = False
        if fault.on == ANY_OP or fault.on in fal.OPS:
            to_fal.append(fault)
            known = True
        if fault.on == ANY_OP or fault.on in replicate.OPS:
            to_replicate.append(fault)
            known = True
        if not known:
            raise ValueError(f"fault op {fault.on!r} is not an op of either simulator")
    return tuple(to_fal), tuple(to_replicate)


class _Pair:
    """Both simulators, their sockets, and the uvicorn servers that serve them."""

    def __init__(
        self,
        host: str,
        fal_port: int,
        replicate_port: int,
        *,
        fal_key: str,
        replicate_key: str,
        queue_ms: int,
        run_ms: int,
        faults: Sequence[Fault | str],
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        replicate_tls: bool = False,
        public_urls: tuple[str | None, str | None] = (None, None),
    ) -> None:
        fal_faults, replicate_faults = split_faults(faults)
        self.fal = FalSimulator(
            key=fal_key, queue_ms=queue_ms, run_ms=run_ms, faults=fal_faults, public_url=public_urls[0]
        )
        self.replicate = ReplicateSimulator(
            key=replicate_key, queue_ms=queue_ms, run_ms=run_ms, faults=replicate_faults, public_url=public_urls[1]
        )
        self.fal_socket = _bind(host, fal_port)
        try:
            self.replicate_socket = _bind(host, replicate_port)
        except OSError:
            self.fal_socket.close()
            raise
        fal_tls = {"ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile} if ssl_certfile else {}
        replicate_tls_files = fal_tls if replicate_tls else {}
        self.fal_url = _url(self.fal_socket, "https" if fal_tls else "http")
        self.replicate_url = _url(self.replicate_socket, "https" if replicate_tls_files else "http")
        common = {"log_level": "warning", "access_log": False, "lifespan": "off"}
        self.failure: BaseException | None = None
        self.servers = (
            _Server(uvicorn.Config(self.fal.app, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, **fal_tls, **common)),
            _Server(
                uvicorn.Config(
                    self.replicate.app,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                    **replicate_tls_files,
                    **common,
                )
            ),
        )

    async def run(
        self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None, *, reraise: bool = True
    ) -> None:
        """Serve until `stop` is set or this task is cancelled, then shut both servers down.

        A server's own failure is kept in `failure` and, with `reraise`, raised.
        """
        sockets = (self.fal_socket, self.replicate_socket)
        tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, sock in zip(self.servers, sockets, strict=True)]
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:  # uvicorn offers a `started` flag, not an event, so poll it
                if all(s.started for s in self.servers) or any(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.005)
            if on_ready is not None and all(s.started for s in self.servers):
                on_ready()
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self.fal.control.close()
            self.replicate.control.close()
            for server in self.servers:
                server.should_exit = True
            # Shielded so a second cancellation cannot leave a server half shut down.
            outcomes = await asyncio.shield(self._drain(tasks))
            for sock in sockets:
                sock.close()
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                # A server that failed (e.g. on a bad TLS certificate) must not fail silently.
                self.failure = outcome
                if reraise:
                    raise outcome

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> list[BaseException | None]:
        # uvicorn waits for every connection to close, and an idle TLS client that never answers
        # close_notify holds that up for the whole graceful timeout. Once no request is in flight,
        # there is nothing left worth waiting for, so stop waiting (force_exit).
        while not all(task.done() for task in tasks):
            if not any(server.server_state.tasks for server in self.servers):
                for server in self.servers:
                    server.force_exit = True
            await asyncio.sleep(0.02)
        return await asyncio.gather(*tasks, return_exceptions=True)


async def serve(
    host: str,
    fal_port: int,
    replicate_port: int,
    *,
    fal_key: str,
    replicate_key: str,
    queue_ms: int,
    run_ms: int,
    faults: Sequence[Fault | str] = (),
    on_ready: Callable[[str, str], None] | None = None,
    fal_public_url: str | None = None,
    replicate_public_url: str | None = None,
) -> None:
    """Run both simulators in the current event loop until cancelled or SIGINT/SIGTERM.

    `on_ready(fal_url, replicate_url)` is called once both accept requests (ports may have been 0).
    The public URLs, when given, are used in returned URLs instead of the request's Host header.
    """
    pair = _Pair(
        host,
        fal_port,
        replicate_port,
        fal_key=fal_key,
        replicate_key=replicate_key,
        queue_ms=queue_ms,
        run_ms=run_ms,
        faults=faults,
        public_urls=(fal_public_url, replicate_public_url),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. Windows event loops
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
    try:
        await pair.run(stop, (lambda: on_ready(pair.fal_url, pair.replicate_url)) if on_ready else None)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


class SimulatorThread:
    """Both simulators on loopback in a background thread with its own event loop (a context manager)."""

    def __init__(
        self,
        *,
        fal_key: str = DEFAULT_FAL_KEY,
        replicate_key: str = DEFAULT_REPLICATE_KEY,
        queue_ms: int = 0,
        run_ms: int = 20,
        faults: Sequence[Fault | str] = (),
        host: str = "127.0.0.1",
        fal_port: int = 0,
        replicate_port: int = 0,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        replicate_tls: bool = False,
    ) -> None:
        """Configure only; `start()` (or `with`) starts serving.

        The TLS cert and key files are for the fal server, which fal_client reaches only over https;
        `replicate_tls=True` serves Replicate over TLS too (replicate-python wraps only https:// output
        URLs in FileOutput).
        """
        self.fal_key = fal_key
        self.replicate_key = replicate_key
        self.fal_url = ""
        self.replicate_url = ""
        self._pair_args = (host, fal_port, replicate_port)
        self._queue_ms = queue_ms
        self._run_ms = run_ms
        self._faults = tuple(faults)
        self._ssl = (ssl_certfile, ssl_keyfile)
        self._replicate_tls = replicate_tls
        self._pair: _Pair | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._control_client: httpx.Client | None = None

    @property
    def fal(self) -> FalSimulator:
        """The fal simulator object (its state), for in-process inspection."""
        assert self._pair is not None, "SimulatorThread is not started"
        return self._pair.fal

    @property
    def replicate(self) -> ReplicateSimulator:
        """The Replicate simulator object (its state), for in-process inspection."""
        assert self._pair is not None, "SimulatorThread is not started"
        return self._pair.replicate

    def start(self, timeout: float = 10.0) -> SimulatorThread:
        """Bind both ports, start serving, and return once both servers accept requests."""
        self._pair = _Pair(
            *self._pair_args,
            fal_key=self.fal_key,
            replicate_key=self.replicate_key,
            queue_ms=self._queue_ms,
            run_ms=self._run_ms,
            faults=self._faults,
            ssl_certfile=self._ssl[0],
            ssl_keyfile=self._ssl[1],
            replicate_tls=self._replicate_tls,
        )
        self.fal_url, self.replicate_url = self._pair.fal_url, self._pair.replicate_url
        self._thread = threading.Thread(target=self._thread_main, name="provider-simulators", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if not all(server.started for server in self._pair.servers):
            self.stop()
            raise RuntimeError("provider simulators did not start") from self._pair.failure
        return self

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._ready.set()  # wake start() even if the servers never came up

    async def _main(self) -> None:
        assert self._pair is not None
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._pair.run(self._stop, self._ready.set, reraise=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut both servers down and join the thread (idempotent)."""
        if self._control_client is not None:
            self._control_client.close()
            self._control_client = None
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("provider simulators did not stop in time")
            self._thread = None

    def reset(self) -> None:
        """POST /_sim/reset to both simulators: no jobs, stats or faults; start-up latency."""
        if self._control_client is None:
            # One client for all resets: building an httpx client loads a CA bundle (~50 ms) each time.
            # No verification: with TLS, the certificate comes from the test's own throwaway CA.
            self._control_client = httpx.Client(timeout=10, verify=False)
        for url in (self.fal_url, self.replicate_url):
            self._control_client.post(f"{url}/_sim/reset").raise_for_status()

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _fault_arg(text: str) -> Fault:
    try:
        fault = Fault.parse(text)
        split_faults([fault])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return fault


def main(argv: list[str] | None = None) -> int:
    """`python -m providers.simulators`: serve both simulators until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m providers.simulators",
        description="Local fal.ai queue and Replicate predictions simulators for FLUX.2 [klein] 4B.",
        epilog="Control routes (/_sim/stats, /_sim/config, /_sim/faults, /_sim/reset) need no auth. "
        f"Fault kinds: {', '.join(k.value for k in FaultKind)}.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fal-port", type=int, default=9101)
    parser.add_argument("--replicate-port", type=int, default=9102)
    parser.add_argument("--queue-ms", type=int, default=50, help="time each job waits in the queue")
    parser.add_argument("--run-ms", type=int, default=200, help="time each job runs")
    parser.add_argument(
        "--fault",
        type=_fault_arg,
        action="append",
        default=[],
        metavar="KIND[:OP[:TIMES]]",
        help="inject a fault (repeatable); OP defaults to 'any', TIMES to until cleared",
    )
    parser.add_argument("--fal-public-url", help="base of returned URLs (default: from the Host header)")
    parser.add_argument("--replicate-public-url", help="base of returned URLs (default: from the Host header)")
    args = parser.parse_args(argv)
    if args.queue_ms < 0 or args.run_ms < 0:
        parser.error("--queue-ms and --run-ms must be >= 0")
    fal_key = os.environ.get("FAL_KEY") or DEFAULT_FAL_KEY
    replicate_key = os.environ.get("REPLICATE_API_TOKEN") or DEFAULT_REPLICATE_KEY
    fal_auth = "key from FAL_KEY" if "FAL_KEY" in os.environ else f"Authorization: Key {fal_key}"
    replicate_auth = (
        "token from REPLICATE_API_TOKEN"
        if "REPLICATE_API_TOKEN" in os.environ
        else f"Authorization: Bearer {replicate_key}"
    )

    def announce(fal_url: str, replicate_url: str) -> None:
        print(f"fal simulator:       {fal_url}  ({fal_auth})", flush=True)
        print(f"replicate simulator: {replicate_url}  ({replicate_auth})", flush=True)
        print(f"latency: queue {args.queue_ms} ms, run {args.run_ms} ms; Ctrl-C stops", flush=True)

    try:
        # The stock asyncio loop, not uvloop: measured ~1.7x faster here with httptools on loopback.
        asyncio.run(
            serve(
                args.host,
                args.fal_port,
                args.replicate_port,
                fal_key=fal_key,
                replicate_key=replicate_key,
                queue_ms=args.queue_ms,
                run_ms=args.run_ms,
                faults=args.fault,
                on_ready=announce,
                fal_public_url=args.fal_public_url,
                replicate_public_url=args.replicate_public_url,
            )
        )
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    return 0
