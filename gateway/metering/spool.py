"""A local append-only, fsynced spool for usage records while Redis is down, and its replayer.

Files in the spool directory, one JSON object (`UsageRecord.to_fields()`) per line:
  usage.spool      records appended while Redis is unreachable; fsynced before `append` returns
  usage.replaying  a batch being settled; it is only renamed from usage.spool, and only deleted once every
                   record in it is settled, so a crash mid-replay leaves it to be replayed again first
  usage.corrupt    lines that do not parse (a torn last line after a crash), kept for a human, never settled

Replaying a record twice is harmless: the ledger's `settle` is exactly-once by request id.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from redis.exceptions import RedisError

from gateway.metering.records import UsageRecord

log = logging.getLogger("gateway.metering.spool")

SPOOL_FILE = "usage.spool"
REPLAYING_FILE = "usage.replaying"
CORRUPT_FILE = "usage.corrupt"
# OSError covers the builtin TimeoutError and refused or reset connections outside redis-py's own errors.
_REDIS_ERRORS = (RedisError, OSError)


def _fsync_dir(directory: Path) -> None:
    """Make a create, rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_durably(path: Path, data: bytes) -> None:
    """Append `data` as whole lines and fsync; a torn last line from a crash is closed off first."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        # without this newline the first new record would be glued to the torn one and lost with it
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def _write_atomically(path: Path, lines: list[bytes]) -> None:
    """Replace `path` with `lines` (write a temporary file, fsync, rename, fsync the directory)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.writelines(line + b"\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _count_lines(path: Path) -> int:
    """Lines in `path`, counting an unterminated last one; 0 if it does not exist."""
    try:
        with open(path, "rb") as f:
            count, last = 0, b"\n"
            while chunk := f.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except FileNotFoundError:
        return 0
    return count + (last != b"\n")


def _parse(line: bytes) -> UsageRecord:
    """A spool line as a record; raises ValueError (or a subclass) if it is not one."""
    try:
        fields = orjson.loads(line)
        if not isinstance(fields, dict):
            raise ValueError(f"not a JSON object: {type(fields).__name__}")
        return UsageRecord.from_fields(fields)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a usage record: {exc!r}") from exc


class UsageSpool:
    """Usage records kept on local disk until Redis is back; one spool directory per gateway process."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.spool_path = self.directory / SPOOL_FILE
        self.replaying_path = self.directory / REPLAYING_FILE
        self.corrupt_path = self.directory / CORRUPT_FILE
        # serialises appends with each other and with the replayer's rename of usage.spool
        self.lock = asyncio.Lock()

    async def append(self, record: UsageRecord) -> None:
        """Append one record and fsync it; when this returns the record survives a crash."""
        line = orjson.dumps(record.to_fields()) + b"\n"
        # shielded: a cancelled caller must not release the lock while its write is still running in the
        # thread, or the replayer could rename, read and delete the file before that write lands in it
        await asyncio.shield(self._append_locked(line))

    async def _append_locked(self, line: bytes) -> None:
        async with self.lock:
            await asyncio.to_thread(_append_durably, self.spool_path, line)

    def pending(self) -> int:
        """Records waiting to be settled, in both files (reads them: call it off the hot path)."""
        return _count_lines(self.spool_path) + _count_lines(self.replaying_path)


class SpoolReplayer:
    """Settles spooled records through the ledger once Redis answers again."""

    def __init__(
        self,
        spool: UsageSpool,
        settle: Callable[[UsageRecord], Awaitable[bool]],
        *,
        interval_s: float = 2.0,
    ) -> None:
        self._spool = spool
        self._settle = settle
        self._interval_s = interval_s
        # two overlapping replays would race on usage.replaying; one at a time
        self._replay_lock = asyncio.Lock()

    async def replay_once(self) -> int:
        """Settle what is spooled, in order; returns records settled (the ledger may have had some already)."""
        async with self._replay_lock:
            spool = self._spool
            if not spool.replaying_path.exists():
                async with spool.lock:
                    if not spool.spool_path.exists():
                        return 0
                    await asyncio.to_thread(self._take_spool)
            lines, records = await asyncio.to_thread(self._load_batch)
            for index, record in enumerate(records):
                try:
                    await self._settle(record)
                except _REDIS_ERRORS as exc:
                    log.warning(
                        "spool replay stopped at %s (%d of %d settled), Redis failed: %r",
                        record.request_id, index, len(records), exc,
                    )  # fmt: skip
                    # keep only the rest: the failed one may have been applied, but settling is exactly-once
                    if index:
                        await asyncio.to_thread(_write_atomically, spool.replaying_path, lines[index:])
                    return index
            await asyncio.to_thread(self._finish_batch)
            if records:
                log.info("spool replay settled %d usage records", len(records))
            return len(records)

    async def run(self) -> None:
        """Replay every `interval_s` while anything is pending; cancel the task to stop."""
        while True:
            try:
                if await asyncio.to_thread(self._spool.pending):
                    await self.replay_once()
            except OSError:
                # a disk error must not end the loop: the records stay on disk for the next round
                log.exception("spool replay failed on local disk")
            await asyncio.sleep(self._interval_s)

    def _take_spool(self) -> None:
        """Start a batch: new appends go to a fresh usage.spool from here on."""
        os.replace(self._spool.spool_path, self._spool.replaying_path)
        _fsync_dir(self._spool.directory)

    def _load_batch(self) -> tuple[list[bytes], list[UsageRecord]]:
        """usage.replaying's good lines and their records; bad lines move to usage.corrupt first."""
        spool = self._spool
        lines: list[bytes] = []
        records: list[UsageRecord] = []
        corrupt: list[bytes] = []
        for line in spool.replaying_path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                records.append(_parse(line))
                lines.append(line)
            except ValueError as exc:
                log.error("corrupt usage spool line moved to %s: %r (%d bytes)", spool.corrupt_path, exc, len(line))
                corrupt.append(line)
        if corrupt:
            # corrupt first, then drop from replaying: a crash in between duplicates a line there, never loses it
            _append_durably(spool.corrupt_path, b"".join(line + b"\n" for line in corrupt))
            _write_atomically(spool.replaying_path, lines)
        return lines, records

    def _finish_batch(self) -> None:
        self._spool.replaying_path.unlink()
        _fsync_dir(self._spool.directory)
