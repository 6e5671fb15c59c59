"""Accepted events that Redis does not have yet, on disk before they are acknowledged.

While Redis is down ``RedisStore`` hands every event to an ``EventSpool``, whose ``add`` returns only
once the event is in an append-only file in ``SIDREC_SPOOL_DIR`` and the file is fsynced: an event
answered 2xx survives the process being stopped or killed. The events are also queued in memory,
oldest first (``pending``, from the moment ``add`` is called, so the store that writes them to Redis
never misses one still being fsynced); once Redis has them all the file is emptied.
Appends are group-committed (the events that arrive during one fsync share the next), one JSON
event per line; a torn last line (killed mid-write, so never acknowledged) is skipped.

Each process writes a file of its own (``events-<random>.spool``, held with ``flock``) and at start
adopts every file in the folder that no living process holds (its own previous run's, or a dead
replica's): their events come first, and each file is deleted once Redis has them. So replicas may
share one folder. Delivery is at least once: a process killed while writing the spool to Redis
replays all of it the next time. Without a folder ``add`` refuses (``StoreUnavailable``, 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections import deque
from pathlib import Path

from service.errors import StoreUnavailable

__all__ = ["EventSpool"]

log = logging.getLogger("sidrec.spool")

#: seconds a refused event should wait before it is sent again
RETRY_AFTER_S = 2.0


class EventSpool:
    """Durable, ordered, bounded queue of ``(user_id, item_ids)`` events on their way to Redis."""

    def __init__(self, directory: Path | None, capacity: int) -> None:
        """``directory``: the spool folder (created if missing), or None for no spool;
        ``capacity``: events held at most, beyond which ``add`` refuses."""
        self.directory = directory
        self.capacity = capacity
        self.pending: deque[tuple[str, list[str]]] = deque()  # oldest first, not in Redis yet
        self.size = 0  # events in ``pending`` (an entry holds one or more)
        self._fd: int | None = None
        self._adopted: list[tuple[Path, int]] = []  # files of earlier processes, locked, still read
        self._waiting: list[tuple[bytes, asyncio.Future[None]]] = []  # lines to append, in order
        self._writer: asyncio.Task[None] | None = None
        self._empty_file = False  # asked to empty the files once ``pending`` is empty
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self._adopt(directory)
        self.path = directory / f"events-{uuid.uuid4().hex[:12]}.spool"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_dir(directory)

    def _adopt(self, directory: Path) -> None:
        for path in sorted(directory.glob("events-*.spool"), key=lambda p: p.stat().st_mtime):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a living process writes it
                os.close(fd)
                continue
            events = _read(path)
            self.pending.extend(events)
            self.size += sum(len(items) for _, items in events)
            self._adopted.append((path, fd))
            if events:
                log.warning("spool: %d events from %s to write to Redis", len(events), path.name)

    async def add(self, user_id: str, item_ids: list[str]) -> None:
        """Queue the event in ``pending`` and return once it is on disk (fsynced); refuse
        (``StoreUnavailable``) without a spool folder, when full, or when the disk fails."""
        if self._fd is None:
            raise _refused("this service keeps no spool (SIDREC_SPOOL_DIR)")
        if self.size + len(item_ids) > self.capacity:
            raise _refused(
                f"{self.size} events are already spooled (SIDREC_EVENT_BUFFER_SIZE={self.capacity})"
            )
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((json.dumps({"user_id": user_id, "items": item_ids}).encode() + b"\n", done))
        self.pending.append((user_id, list(item_ids)))
        self.size += len(item_ids)
        self._kick()
        await asyncio.shield(done)  # a caller that goes away does not take its event with it

    def written(self, entries: int = 1) -> None:
        """The ``entries`` oldest pending entries are in Redis; once none is left the files are emptied."""
        for _ in range(entries):
            _, items = self.pending.popleft()
            self.size -= len(items)
        if not self.pending and (self._adopted or self._fd is not None):
            self._empty_file = True
            self._kick()

    def _kick(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="sidrec-spool")

    async def _write_loop(self) -> None:
        """The only writer of the files: appends (group-committed) and, when drained, emptying."""
        while self._waiting or self._empty_file:
            if self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await asyncio.to_thread(_append, self._fd, b"".join(line for line, _ in batch))
                except OSError as exc:
                    log.error("spool: cannot write %s: %s", self.path, exc)
                    for _, done in batch:  # refused, but still in ``pending``: at least once
                        if not done.done():
                            done.set_exception(_refused("the spool cannot be written"))
                    continue
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
            elif self._empty_file:
                self._empty_file = False
                if not self.pending:  # every line on disk is in Redis
                    adopted, self._adopted = self._adopted, []
                    await asyncio.to_thread(self._empty, adopted)

    def _empty(self, adopted: list[tuple[Path, int]]) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        for path, fd in adopted:
            path.unlink(missing_ok=True)
            os.close(fd)
        if adopted and self.directory is not None:
            _fsync_dir(self.directory)

    async def close(self) -> None:
        """Finish the appends under way; delete this process's file if Redis has all of it."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        if self._fd is None:
            return
        if not self.pending and not self._adopted:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        for _, fd in self._adopted:  # still to be written: the next process adopts them
            os.close(fd)
        self._adopted = []


def _append(fd: int | None, data: bytes) -> None:
    """Append and fsync ``data``, or leave the file as it was (a failed write must not leave half a
    line for the next append to run into)."""
    assert fd is not None  # ``add`` refuses before queueing without a file
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def _refused(why: str) -> StoreUnavailable:
    return StoreUnavailable(f"events: the history store is down and {why}; retry later", RETRY_AFTER_S)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> list[tuple[str, list[str]]]:
    """The events of a spool file in order; a torn last line (never acknowledged) is skipped."""
    events = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                log.warning("spool: %s:%d: torn last line skipped (it was never acknowledged)", path, number)
                break
            try:
                row = json.loads(line)
                events.append((str(row["user_id"]), [str(i) for i in row["items"]]))
            except (ValueError, KeyError, TypeError):
                log.error("spool: %s:%d: unreadable line skipped", path, number)
    return events
