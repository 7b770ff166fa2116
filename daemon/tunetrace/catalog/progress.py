"""How far an ingest has got: one line, redrawn in place on a terminal, or printed every few seconds
to a log (systemd, cron, a pipe), where a redrawn line would be one endless line of carriage returns.

The estimate of the time left is by bytes: the sizes of all files are known before the first one is
decoded (``stat``), their durations are not without probing every file. Skipped files take almost no
time, so only the bytes of files actually worked on set the pace; a resumed run, which skips its first
half, is not promised an end as soon as the skipping stops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from tunetrace.durations import hours_minutes_seconds

Clock = Callable[[], float]


@dataclass
class IngestProgress:
    """Counts for the progress line; ``started_s`` and every ``now_s`` come from one clock."""

    total_files: int
    total_bytes: int
    started_s: float
    files_done: int = 0
    failed: int = 0
    audio_s: float = 0.0
    bytes_done: int = 0
    bytes_worked: int = 0
    """Bytes of the files decoded (added, replaced or failed): the ones that take time."""

    def done(self, status: str, audio_s: float, size_bytes: int) -> None:
        """One file finished with ``status`` (``added``, ``skipped``, ``failed`` ...)."""
        self.files_done += 1
        self.bytes_done += size_bytes
        if status == "failed":
            self.failed += 1
        if status in ("added", "replaced", "failed"):
            self.bytes_worked += size_bytes
        if status in ("added", "replaced"):
            self.audio_s += audio_s

    def eta_s(self, now_s: float) -> float | None:
        """Seconds left at the pace so far; ``None`` before any file was worked on."""
        elapsed = now_s - self.started_s
        if self.bytes_worked <= 0 or elapsed <= 0:
            return None
        return max(0.0, (self.total_bytes - self.bytes_done) * elapsed / self.bytes_worked)

    def line(self, now_s: float) -> str:
        elapsed = max(now_s - self.started_s, 1e-9)
        failed = f" ({self.failed} failed)" if self.failed else ""
        eta = self.eta_s(now_s)
        return (
            f"{self.files_done}/{self.total_files} files{failed}, {self.audio_s / 3600:.2f} h of audio, "
            f"{self.audio_s / elapsed:.0f} s of audio/s, elapsed {hours_minutes_seconds(elapsed)}, "
            f"ETA {hours_minutes_seconds(eta) if eta is not None else '?'}"
        )


class ProgressPrinter:
    """Writes ``IngestProgress`` to ``stream``: redrawn in place (``live``) at least every second,
    or as a plain ``progress:`` line every ``every_s`` seconds, from a thread of its own so a long
    file does not silence it."""

    def __init__(
        self, progress: IngestProgress, stream: TextIO, clock: Clock, *, live: bool, every_s: float,
    ) -> None:
        self._progress, self._stream, self._clock, self._live = progress, stream, clock, live
        self._every_s = min(every_s, 1.0) if live else every_s
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="ingest-progress", daemon=True)
        self._ticker.start()

    def done(self, status: str, audio_s: float, size_bytes: int) -> None:
        with self._lock:
            self._progress.done(status, audio_s, size_bytes)
            if self._live:
                self._draw()

    def close(self) -> None:
        """The final state, on a line of its own."""
        self._closed.set()
        self._ticker.join(timeout=5)
        with self._lock:
            self._draw()
            if self._live:
                self._stream.write("\n")
                self._stream.flush()

    def _tick(self) -> None:
        while not self._closed.wait(self._every_s):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        text = self._progress.line(self._clock())
        if self._live:
            self._stream.write(f"\r{text}\x1b[K")  # \x1b[K: clear what a longer earlier line left
        else:
            self._stream.write(f"progress: {text}\n")
        self._stream.flush()
