"""HTTP plumbing both provider adapters share: one client, same-origin auth, errors translated at the edge.

Nothing provider-specific lives here. An adapter sends requests through `ProviderHTTP`, which turns
transport failures and error statuses into `gateway.exceptions` and never lets the API key into a message.

Requests wait for a connection slot here, not in httpcore's pool: its queue rescans every connection for
every waiting request on each pool event (encode/httpcore#1035), which pinned a CPU once requests outnumbered
connections. A tenth of the connections is kept for cancels, so stopping a job never waits behind traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Generator, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson

from gateway.exceptions import (
    ContentPolicyViolation,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejectedInput,
    ProviderTimeout,
    ProviderUnavailable,
)
from gateway.types import CancelOutcome, JobCancelled, JobStarted, ProviderJob, Trace, TraceEvent
from providers.base import ProviderEndpoint

T = TypeVar("T")
log = logging.getLogger("providers.http")

# An adapter's `cancel`: ask the provider to stop one job, and say what it answered.
Cancel = Callable[[ProviderJob], Awaitable[CancelOutcome]]

MAX_PROVIDER_TEXT = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Problem:
    """What a provider's error body says, as far as the adapter could tell."""

    detail: str | None = None
    param: str | None = None  # the offending input field, when the provider named one
    content_policy: bool = False


# An adapter's reader of its provider's error bodies: any decoded JSON value in, Problem out.
Describe = Callable[[Any], Problem]


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port made explicit, so `https://h` == `https://h:443`."""
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))


class SameOriginAuth(httpx.Auth):
    """Adds the Authorization header only to requests aimed at the endpoint's own origin.

    Providers hand back status and result URLs; if one ever points elsewhere, the key must not follow it.
    """

    def __init__(self, base_url: str, header_value: str) -> None:
        self._origin = origin(httpx.URL(base_url))
        self._header_value = header_value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self._origin:
            request.headers["Authorization"] = self._header_value
        yield request


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given as delta-seconds or an HTTP date; None if absent or junk."""
    if not value:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def poll_delays(endpoint: ProviderEndpoint, budget: float) -> Iterator[float]:
    """Sleeps between status polls: doubling from the initial interval to the max, for `budget` s in all."""
    stop = time.monotonic() + budget
    delay = endpoint.initial_poll_interval
    while time.monotonic() + delay < stop:
        yield delay
        delay = min(delay * 2, endpoint.max_poll_interval)


# Set inside a `start_job` create that already holds its connection slot (taken before the create was
# shielded), so `send` does not take a second one.
_HOLDS_SLOT: ContextVar[bool] = ContextVar("holds_slot", default=False)


class ProviderHTTP:
    """One provider's HTTP client: shared connection pool, same-origin auth, ProviderErrors only."""

    def __init__(self, provider: str, endpoint: ProviderEndpoint, auth_header: str) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self._origin = origin(httpx.URL(endpoint.base_url))
        self._secret = endpoint.api_key
        self._client = httpx.AsyncClient(
            auth=SameOriginAuth(endpoint.base_url, auth_header),
            limits=httpx.Limits(
                max_connections=endpoint.max_connections, max_keepalive_connections=endpoint.max_connections
            ),
            timeout=httpx.Timeout(endpoint.read_timeout, connect=endpoint.connect_timeout),
            headers={"User-Agent": "flux-gateway"},
            follow_redirects=False,  # a redirect is a protocol surprise here, not something to chase
        )
        # Cleanup tasks that outlive the call that started them (see `start_job`), kept to stop GC.
        self._cleanup: set[asyncio.Task[None]] = set()
        self._urls: dict[str, httpx.URL] = {}  # bounded: one per path the adapter builds (per deployment)
        reserved = endpoint.max_connections // 10  # for cancels (`control=True`); none on a tiny pool
        self._slots = asyncio.Semaphore(endpoint.max_connections - reserved)

    def url(self, path: str) -> httpx.URL:
        """An absolute URL under the endpoint's base URL (parsed once per path: they repeat every request)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(f"{self.endpoint.base_url.rstrip('/')}/{path.lstrip('/')}")
        return url

    def provider_url(self, value: Any, field: str) -> str:
        """A URL the provider handed back, checked to be absolute http(s), or the response is malformed."""
        if isinstance(value, str):
            # urlsplit, not httpx.URL: this runs for every image and status URL, and only the shape matters here
            with contextlib.suppress(ValueError):
                url = urlsplit(value)
                if url.scheme in ("http", "https") and url.hostname and url.port != 0:  # .port checks it
                    return value
        raise self.malformed(f"{field} is not a usable URL")

    def malformed(self, what: str) -> ProviderUnavailable:
        """The error for a provider answer we cannot use."""
        return ProviderUnavailable(f"{self.provider} sent a malformed response: {what}", provider=self.provider)

    def sanitize(self, text: object) -> str:
        """Provider text made safe for a message: one line, no API key, at most ~300 characters."""
        cleaned = _WHITESPACE.sub(" ", str(text)).strip()
        if self._secret:
            cleaned = cleaned.replace(self._secret, "[redacted]")
        if len(cleaned) > MAX_PROVIDER_TEXT:
            cleaned = cleaned[: MAX_PROVIDER_TEXT - 1] + "…"
        return cleaned

    async def send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        limits: httpx.Timeout | None = None,
        control: bool = False,
    ) -> httpx.Response:
        """Send one request (`what` names it in messages); transport failures become ProviderErrors.

        A `control` request (a cancel) skips the wait for a connection slot and uses the reserved ones.
        """
        if control or _HOLDS_SLOT.get():
            return await self._send(method, url, what, json, headers, params, limits)
        async with self._slots:
            return await self._send(method, url, what, json, headers, params, limits)

    async def _send(
        self,
        method: str,
        url: str | httpx.URL,
        what: str,
        json: Any,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        limits: httpx.Timeout | None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        content = None
        if json is not None:
            content = orjson.dumps(json)  # data-URI edits make big bodies; orjson is much faster
            all_headers["Content-Type"] = "application/json"
        name = self.provider
        try:
            return await self._client.request(
                method,
                url,
                content=content,
                headers=all_headers,
                params=params,
                timeout=limits if limits is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"{name} did not answer the {what} in time ({type(exc).__name__})", provider=name
            ) from None
        except httpx.RequestError as exc:
            raise ProviderUnavailable(
                f"could not reach {name} for the {what}: {type(exc).__name__}: {self.sanitize(exc)}",
                provider=name,
            ) from None
        except httpx.InvalidURL:
            raise self.malformed(f"the {what} URL is not valid") from None  # a provider-sent URL httpx rejects

    def json(self, response: httpx.Response, what: str) -> Any:
        """The response body decoded as JSON, or ProviderUnavailable."""
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise self.malformed(f"the {what} body is not JSON (HTTP {response.status_code})") from None

    def json_object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        """The response body as a JSON object, or ProviderUnavailable."""
        body = self.json(response, what)
        if not isinstance(body, dict):
            raise self.malformed(f"the {what} body is not a JSON object")
        return body

    def status_error(self, response: httpx.Response, what: str, describe: Describe) -> ProviderError:
        """The gateway error for an unsuccessful HTTP status, built from the provider's error body."""
        status = response.status_code
        try:
            problem = describe(orjson.loads(response.content))
        except orjson.JSONDecodeError:
            problem = Problem()
        said = f": {self.sanitize(problem.detail)}" if problem.detail else ""
        name, param = self.provider, problem.param
        if problem.content_policy and 400 <= status < 500:
            return ContentPolicyViolation(f"{name} refused the content{said}", provider=name, param=param)
        if status == 429:
            after = parse_retry_after(response.headers.get("Retry-After"))
            return ProviderRateLimited(f"{name} rate-limited the {what}{said}", provider=name, retry_after=after)
        if status in (401, 403):
            if origin(response.request.url) != self._origin:
                # We deliberately sent no key to a foreign origin: the URL is the problem, not the key.
                return ProviderUnavailable(f"{name} sent a {what} URL on another origin", provider=name)
            return ProviderAuthError(f"{name} rejected our credentials (HTTP {status})", provider=name)
        if status in (400, 422):
            return ProviderRejectedInput(f"{name} rejected the input{said}", provider=name, param=param)
        if status in (408, 504):
            return ProviderTimeout(f"{name} timed out on the {what} (HTTP {status}){said}", provider=name)
        return ProviderUnavailable(f"{name} {what} failed with HTTP {status}{said}", provider=name)

    async def start_job(
        self,
        start: Awaitable[T],
        job_of: Callable[[T], ProviderJob],
        cancel: Cancel,
        *,
        within: float,
        trace: Trace | None,
    ) -> T:
        """Await the request that creates a provider job, without losing the job if we are cancelled.

        The create request carries no handle until it answers. If the caller is cancelled meanwhile, the
        request carries on in the background and the job it creates is cancelled once its handle is known:
        JobStarted and JobCancelled then reach `trace` after our caller has already seen CancelledError.
        """
        # The slot is taken before the shield: a caller cancelled while waiting for a connection leaves
        # no create behind to be sent later, for a client that is gone.
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            _close(start)
            raise
        task: asyncio.Future[T] = asyncio.ensure_future(self._holding_slot(start))
        try:
            handle = await asyncio.shield(task)
        except asyncio.CancelledError:
            self._spawn(_cancel_once_started(task, job_of, cancel, within, trace))
            raise
        job = job_of(handle)
        try:
            emit(trace, JobStarted(job))
        except BaseException:
            # A raising trace is the caller's bug and propagates, but it must not leave the job running.
            await self.cancel_jobs(cancel, (job,), within=within, trace=trace)
            raise
        return handle

    async def _holding_slot(self, start: Awaitable[T]) -> T:
        """Await `start` with the connection slot `start_job` took, and give it back after."""
        _HOLDS_SLOT.set(True)  # this task's own context: the create's `send` uses the slot already held
        try:
            return await start
        finally:
            self._slots.release()

    async def cancel_jobs(
        self, cancel: Cancel, jobs: Collection[ProviderJob], *, within: float, trace: Trace | None
    ) -> None:
        """Cancel jobs while our caller is being cancelled or gives up: shielded, each bounded by `within` s.

        Each job is reported once as JobCancelled, FAILED if its cancel raised or took longer than `within`.
        If we are cancelled again while waiting, the cancels (and their reports) finish in the background.
        """
        tasks = [self._spawn(_cancel_and_report(cancel, job, within, trace)) for job in jobs]
        if not tasks:
            return
        # asyncio.wait cancels nothing when we are cancelled again: a shield. Each task bounds itself.
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error  # only a raising trace (or a bug) gets here: the cancels themselves are done

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)
        return task

    async def aclose(self) -> None:
        """Stop leftover cleanup tasks and close the connection pool."""
        for task in self._cleanup:
            task.cancel()
        if self._cleanup:
            await asyncio.wait(set(self._cleanup))
        await self._client.aclose()


def _close(start: Awaitable[object]) -> None:
    """Drop a create that will never run (no "coroutine was never awaited" warning)."""
    if isinstance(start, Coroutine):
        start.close()


def emit(trace: Trace | None, event: TraceEvent) -> None:
    """Hand `event` to the caller's trace callback, if there is one."""
    if trace is not None:
        trace(event)


async def _cancel_and_report(cancel: Cancel, job: ProviderJob, within: float, trace: Trace | None) -> None:
    """Cancel one job within `within` s, then report it; best effort, so a failed cancel is FAILED, not raised."""
    outcome = CancelOutcome.FAILED  # unless the provider answers in time
    try:
        # A failed cancel must not mask the cancellation (or error) that triggered it.
        with contextlib.suppress(ProviderError, TimeoutError):
            async with asyncio.timeout(within):
                outcome = await cancel(job)
    finally:
        if outcome is CancelOutcome.FAILED:
            # Operators need to know: the job may run on, and bill, at the provider.
            log.warning("could not cancel %s job %s within %.1f s; it may still run", job.provider, job.job_id, within)
        # After the cancel, whatever happened to it (even aclose stopping us): exactly one report per job.
        emit(trace, JobCancelled(job, outcome))


async def _cancel_once_started(
    start: asyncio.Future[T], job_of: Callable[[T], ProviderJob], cancel: Cancel, within: float, trace: Trace | None
) -> None:
    try:
        handle = await start
    except ProviderError:
        return  # no job was created, so there is nothing to cancel
    job = job_of(handle)
    try:
        emit(trace, JobStarted(job))
    finally:
        await _cancel_and_report(cancel, job, within, trace)
