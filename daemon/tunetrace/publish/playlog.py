"""The local play log: every play event as one JSON line, so the record exists without any broker.

Each ``play_started`` / ``play_ended`` event becomes one line ``{"logged_at": ..., "event": ...,
"event_id": ..., "play": {...}}`` (the same ``PlayEvent.to_json()`` payload MQTT carries, see
``docs/mqtt.md``), written, flushed and fsync'd before ``publish_event`` returns, so a power cut
loses at most the line being written.  A line cut short by a crash is closed with a newline when
the log is next opened, so the following record still starts on its own line.

Rotation by size, like ``logging.handlers.RotatingFileHandler`` but durable: when the next line
would take the file past ``max_bytes``, ``plays.jsonl`` becomes ``plays.jsonl.1`` (older backups
shift up, the one past ``backups`` is deleted; ``backups=0`` starts the file afresh) and the
directory is fsync'd so the renames survive a crash.

File I/O runs in a worker thread; an ``asyncio.Lock`` keeps lines in call order.  Now-playing and
health updates are not logged here (they are state, not records).

A write that fails (a full disk) leaves nothing behind: the file is unbuffered, so no failed line
can surface later from a buffer, and it is truncated back to where the line began, so no partial
line remains.  The line is kept in memory, in order, and written before the next one (on the next
event or health tick) once the disk accepts it; one ERROR line per spell says so.  At most
``_MAX_UNWRITTEN`` lines wait; beyond that the oldest are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from tunetrace.config import PlayLogConfig
from tunetrace.events import Play, PlayEvent, StationHealth

log = logging.getLogger(__name__)

_MAX_UNWRITTEN = 10_000
"""Lines kept in memory while the disk refuses them (a few MB at most)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PlayLog:
    """An ``EventSink`` that appends play events to a size-rotated JSON Lines file."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        backups: int,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be positive and backups non-negative")
        self._path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._clock = clock
        self._lock = asyncio.Lock()
        self._file: BinaryIO | None = None
        self._unwritten: deque[bytes] = deque()
        self._failing = False
        self.dropped_lines = 0
        """Lines dropped because more than ``_MAX_UNWRITTEN`` waited for the disk."""

    @classmethod
    def from_config(cls, config: PlayLogConfig, data_dir: Path) -> PlayLog:
        """``config.path``, or ``<data_dir>/plays.jsonl`` when the config does not name one."""
        path = config.path or data_dir / "plays.jsonl"
        return cls(path, max_bytes=config.max_bytes, backups=config.backups)

    @property
    def path(self) -> Path:
        return self._path

    async def publish_event(self, event: PlayEvent) -> None:
        record = {"logged_at": self._clock().isoformat(), **event.to_json()}
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        async with self._lock:
            await asyncio.to_thread(self._write_line, line)

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        return None

    async def publish_health(self, station: str, health: StationHealth) -> None:
        """Health ticks retry lines the disk refused."""
        if self._unwritten:
            async with self._lock:
                await asyncio.to_thread(self._write_pending)

    @property
    def unwritten_lines(self) -> int:
        """Lines waiting in memory for the disk (lost if the daemon dies first)."""
        return len(self._unwritten)

    async def start(self) -> None:
        return None

    async def close(self, deadline_s: float) -> None:
        """Close the file; every line was written when published, unless the disk refused it."""
        async with self._lock:
            if self._unwritten:
                await asyncio.to_thread(self._write_pending)
            if self._unwritten:
                log.error("play log %s: %d line(s) could not be written and are lost at exit; free space",
                          self._path, len(self._unwritten))
            await asyncio.to_thread(self._close_file)

    # -- worker-thread side -----------------------------------------------------------------------

    def _write_line(self, line: bytes) -> None:
        self._unwritten.append(line)
        if len(self._unwritten) > _MAX_UNWRITTEN:
            self._unwritten.popleft()
            self.dropped_lines += 1
            log.warning("play log %s: dropped the oldest unwritten line (%d waiting)",
                        self._path, _MAX_UNWRITTEN)
        self._write_pending()

    def _write_pending(self) -> None:
        """Write waiting lines in order; stop (keeping them) at the first the disk refuses."""
        while self._unwritten:
            try:
                self._write_one(self._unwritten[0])
            except OSError as exc:
                if not self._failing:
                    self._failing = True
                    log.error("cannot write the play log %s: %s; %d line(s) kept in memory and retried; "
                              "free space in %s", self._path, exc.strerror or exc, len(self._unwritten),
                              self._path.parent)
                return
            self._unwritten.popleft()
            if self._failing:
                self._failing = False
                log.info("play log %s writable again", self._path)

    def _write_one(self, line: bytes) -> None:
        handle = self._open()
        size = os.fstat(handle.fileno()).st_size  # not tell(): stale after a truncate (O_APPEND)
        if size > 0 and size + len(line) > self._max_bytes:
            self._rotate()
            handle = self._open()
            size = os.fstat(handle.fileno()).st_size
        try:
            written = handle.write(line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(handle.fileno(), size)  # no partial line left behind
            raise

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            created = not self._path.exists()
            # Unbuffered: a refused write must fail now, not surface later from a buffer.
            handle = self._path.open("ab", buffering=0)
            if created:
                _fsync_directory(self._path.parent)
            if handle.tell() > 0 and not self._ends_with_newline():
                log.warning("play log %s ended in a partial line (crash?); closing it", self._path)
                handle.write(b"\n")
            self._file = handle
        return self._file

    def _ends_with_newline(self) -> bool:
        with self._path.open("rb") as reader:
            reader.seek(-1, os.SEEK_END)
            return reader.read(1) == b"\n"

    def _rotate(self) -> None:
        self._close_file()
        if self._backups == 0:
            self._path.unlink(missing_ok=True)
        else:
            self._backup(self._backups).unlink(missing_ok=True)
            for index in range(self._backups - 1, 0, -1):
                if self._backup(index).exists():
                    self._backup(index).replace(self._backup(index + 1))
            self._path.replace(self._backup(1))
        _fsync_directory(self._path.parent)
        log.info("play log %s rotated (%d backup(s) kept)", self._path, self._backups)

    def _backup(self, index: int) -> Path:
        return self._path.with_name(f"{self._path.name}.{index}")

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_directory(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PlayLogReader:
    """Past plays read back from the play log and its rotated backups (``PlayQuery`` for
    ``/api/plays`` until the play history replaces it). Blocking: call it from a worker thread.

    A play's ``play_ended`` record supersedes its ``play_started`` one; an unreadable line (a crash
    cut it short) is skipped. Reads whole files: the log is size-capped (``max_bytes`` x backups).
    """

    def __init__(self, path: Path, backups: int) -> None:
        self._path = path
        self._backups = backups

    @classmethod
    def from_config(cls, config: PlayLogConfig, data_dir: Path) -> PlayLogReader:
        return cls(config.path or data_dir / "plays.jsonl", config.backups)

    def plays(self, station: str | None, start: datetime | None, end: datetime | None) -> list[Play]:
        """Plays of ``station`` (``None``: all) overlapping ``[start, end]``, oldest first; an open
        play overlaps everything after its start."""
        latest: dict[str, Play] = {}
        for path in self._files():
            for play in _read_plays(path):
                if station is None or play.station == station:
                    latest[play.play_id] = play
        found = [p for p in latest.values() if _overlaps(p, start, end)]
        return sorted(found, key=lambda p: p.started_at)

    def _files(self) -> list[Path]:
        """Oldest first: ``plays.jsonl.<backups>`` ... ``plays.jsonl.1``, ``plays.jsonl``."""
        backups = [self._path.with_name(f"{self._path.name}.{i}") for i in range(self._backups, 0, -1)]
        return [p for p in [*backups, self._path] if p.is_file()]


def _overlaps(play: Play, start: datetime | None, end: datetime | None) -> bool:
    """An open play (no ``ended_at``) lasts until now: it overlaps every span after its start."""
    if end is not None and play.started_at > end:
        return False
    return start is None or play.ended_at is None or play.ended_at >= start


def _read_plays(path: Path) -> list[Play]:
    plays = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                plays.append(Play.from_json(json.loads(line)["play"]))
            except (ValueError, KeyError, TypeError):
                log.debug("play log %s line %d is not a play record; skipped", path, number)
    return plays

