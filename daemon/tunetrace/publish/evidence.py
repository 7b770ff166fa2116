"""Evidence: the matched audio around each play start, kept compressed, so a disputed play can be
listened to.

A station with ``evidence:`` keeps its last minute or so of audio (``AudioHistory``). When a play
starts, the recorder waits until the stream has passed ``started_at + after_s`` (a play is
confirmed a few seconds after it began, so most of the clip is already there), then encodes
``[started_at - before_s, started_at + after_s]`` with ffmpeg to Ogg Opus::

    <folder>/<station>/<YYYY-MM-DD>/<YYYYmmddTHHMMSSZ>-<play_id>.opus

The ``play_id`` is the one in the play's events, the play log and the history, so a disputed play
leads straight to its file. Files older than ``retention_days`` are deleted (hourly); a clip that
cannot be written is logged and never stops the station.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from tunetrace.config import EvidenceConfig

log = logging.getLogger(__name__)

_MARGIN_S = 60.0
"""Audio kept beyond the clip itself: a play is confirmed up to tens of seconds after it began."""
_ENCODE_TIMEOUT_S = 60.0
_PRUNE_EVERY_S = 3600.0


class AudioHistory:
    """The newest ``capacity`` samples of one stream, addressed by absolute sample index."""

    def __init__(self, capacity: int) -> None:
        self._buffer = np.zeros(capacity, np.float32)
        self._end = 0
        """Absolute index one past the newest sample written."""

    @property
    def end(self) -> int:
        return self._end

    def write(self, start_sample: int, samples: np.ndarray) -> None:
        """Append a block; a gap (reconnect) reads as silence, never as stale audio."""
        capacity = self._buffer.size
        block = np.asarray(samples, np.float32)[-capacity:]
        start = start_sample + (samples.size - block.size)
        if start > self._end:
            gap = np.arange(max(self._end, start - capacity), start)
            self._buffer[gap % capacity] = 0.0
        self._buffer[np.arange(start, start + block.size) % capacity] = block
        self._end = max(self._end, start + block.size)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` as far as they are still held (older ones are gone)."""
        start = max(start, self._end - self._buffer.size, 0)
        stop = min(stop, self._end)
        if stop <= start:
            return np.zeros(0, np.float32)
        indices = np.arange(start, stop) % self._buffer.size
        return self._buffer[indices].copy()


@dataclass(frozen=True)
class _Pending:
    play_id: str
    started_at: datetime
    start_sample: int
    stop_sample: int


class EvidenceRecorder:
    """One station's evidence clips: fed audio by the capture task, told of play starts."""

    def __init__(
        self, station: str, config: EvidenceConfig, folder: Path, sample_rate: int, *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._station = station
        self._config = config
        self._folder = folder / station
        self._rate = sample_rate
        self._wall_clock = wall_clock
        self._history = AudioHistory(round((config.before_s + config.after_s + _MARGIN_S) * sample_rate))
        self._pending: list[_Pending] = []
        self.written: list[Path] = []
        """Clips written since start (newest last)."""

    def audio(self, start_sample: int, samples: np.ndarray) -> None:
        self._history.write(start_sample, samples)

    def play_started(self, play_id: str, started_at: datetime, start_s: float) -> None:
        """Queue the clip around a play's start (``start_s`` on the station's stream clock)."""
        self._pending.append(_Pending(
            play_id, started_at,
            max(0, round((start_s - self._config.before_s) * self._rate)),
            round((start_s + self._config.after_s) * self._rate),
        ))

    async def flush(self, *, everything: bool = False) -> None:
        """Write every clip whose audio has arrived (``everything``: at shutdown, what there is)."""
        ready = [p for p in self._pending if everything or p.stop_sample <= self._history.end]
        self._pending = [p for p in self._pending if p not in ready]
        for pending in ready:
            audio = self._history.read(pending.start_sample, pending.stop_sample)
            if audio.size == 0:
                log.warning("%s: no audio left for the evidence of play %s", self._station, pending.play_id)
                continue
            path = self._path(pending)
            try:
                await encode_opus(audio, self._rate, path, self._config.bitrate_kbps)
            except (OSError, RuntimeError, TimeoutError) as exc:
                log.warning("%s: cannot write evidence %s: %s", self._station, path, exc)
                continue
            self.written.append(path)
            log.debug("%s: evidence %s (%.1f s)", self._station, path, audio.size / self._rate)

    def _path(self, pending: _Pending) -> Path:
        at = pending.started_at.astimezone(UTC)
        name = f"{at.strftime('%Y%m%dT%H%M%SZ')}-{pending.play_id}.opus"
        return self._folder / at.strftime("%Y-%m-%d") / name

    def prune(self) -> int:
        """Delete clips older than ``retention_days`` (by modification time); how many went."""
        cutoff = (self._wall_clock() - timedelta(days=self._config.retention_days)).timestamp()
        removed = 0
        if not self._folder.is_dir():
            return 0
        for path in sorted(self._folder.rglob("*.opus")):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        for folder in sorted(self._folder.iterdir()):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if removed:
            log.info("%s: deleted %d evidence clip(s) older than %g days", self._station, removed,
                     self._config.retention_days)
        return removed

    async def run(self) -> None:
        """Write clips as their audio arrives and prune hourly, until cancelled."""
        since_prune_s = _PRUNE_EVERY_S  # prune once at start
        while True:
            if since_prune_s >= _PRUNE_EVERY_S:
                await asyncio.to_thread(self.prune)
                since_prune_s = 0.0
            await self.flush()
            await asyncio.sleep(1.0)
            since_prune_s += 1.0


async def encode_opus(audio: np.ndarray, sample_rate: int, path: Path, bitrate_kbps: int) -> None:
    """Mono float32 PCM -> Ogg Opus at ``path`` through ffmpeg (written beside, then renamed)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is not installed or not on PATH (Debian: apt-get install ffmpeg)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    process = await asyncio.create_subprocess_exec(
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
        "-c:a", "libopus", "-b:a", f"{bitrate_kbps}k", "-f", "ogg", str(partial),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(_ENCODE_TIMEOUT_S):
            _, stderr = await process.communicate(audio.astype("<f4").tobytes())
    except TimeoutError:
        process.kill()
        await process.wait()
        partial.unlink(missing_ok=True)
        raise
    if process.returncode != 0:
        partial.unlink(missing_ok=True)
        reason = stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(reason[-1] if reason else f"ffmpeg exited with status {process.returncode}")
    partial.replace(path)
