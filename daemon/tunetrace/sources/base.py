"""What every audio source delivers, and the loop that keeps a source alive.

A source (``AudioSource``) runs one *session*: it yields mono float32 blocks at the encoder's rate
until the stream ends (EOF) or fails (``SourceError``).  ``SourceRunner`` turns sessions into one
endless stream of ``AudioBlock`` values stamped with their absolute sample index on the station's
clock: it restarts failed or stalled sessions with capped, jittered exponential backoff, detects
silence, and keeps a ``SourceState`` the service reads for health and the watchdog.

Time is data: for real-time sources the stream clock follows the wall clock across reconnects
(an outage of 20 s advances the sample index by 20 s of samples), so "no evidence for 8 s" in the
tracker means 8 s on the air, not 8 s of received audio.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np

from tunetrace.backoff import Backoff, BackoffPolicy
from tunetrace.errors import SourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioBlock:
    start_sample: int
    """Absolute index of ``samples[0]`` on the station's stream clock."""
    samples: np.ndarray
    """Mono float32 at the encoder's sample rate."""
    captured_at: datetime
    """UTC wall-clock time of ``samples[0]`` (arrival time minus the block's duration)."""


@dataclass(frozen=True)
class SourceGap:
    """Yielded by a source that keeps its own timeline (a simulated broadcast read as fast as
    possible): this many samples went by on the air without reaching us, an outage. A real-time
    source never yields it; the runner measures its outages on the wall clock."""

    samples: int


class AudioSource(Protocol):
    @property
    def description(self) -> str:
        """Where the audio comes from, safe to log (no credentials)."""
        ...

    @property
    def realtime(self) -> bool:
        """True when audio arrives at the pace it is played (streams, sound cards, paced files)."""
        ...

    def session(self) -> AsyncIterator[np.ndarray | SourceGap]:
        """One connection: mono float32 blocks until EOF; raises ``SourceError`` on failure."""
        ...


@dataclass(frozen=True)
class RunnerParams:
    sample_rate: int
    backoff: BackoffPolicy
    stall_timeout_s: float
    """No block for this long ends the session as failed (a hung decoder or a dead TCP peer)."""
    silence_threshold_dbfs: float
    silence_after_s: float


class SourceState:
    """What the service reads about a source; written only by its ``SourceRunner``."""

    def __init__(self, now_monotonic: float | None = None) -> None:
        self.up = False
        self.silent = False
        self.reconnects = 0
        self.last_audio_at: datetime | None = None
        self.progress_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
        """Last time the runner made progress: a block arrived or a (re)connect was attempted."""
        self.last_error: str | None = None


def block_dbfs(samples: np.ndarray) -> float:
    """RMS level of a block in dB relative to full scale (-inf for digital silence)."""
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


class SourceRunner:
    """Runs sessions of one source forever, yielding stamped blocks; cancel the iterator to stop."""

    def __init__(
        self,
        source: AudioSource,
        params: RunnerParams,
        state: SourceState | None = None,
        *,
        on_change: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        until_eof: bool = False,
    ) -> None:
        self._source = source
        self._params = params
        self._monotonic = monotonic
        self.state = state or SourceState(monotonic())
        self._on_change = on_change or (lambda: None)
        self.changed = asyncio.Event()
        """Set on every change of ``state.up`` or ``state.silent``; the consumer clears it."""
        self._backoff = Backoff(params.backoff, rng)
        self._wall_clock = wall_clock
        self._until_eof = until_eof
        """Stop at the first clean end of stream instead of reconnecting (files, backfills, tests)."""
        self._next_sample = 0
        self._silent_samples = 0
        self._origin: datetime | None = None
        self._last_audio: tuple[int, float] | None = None
        """Stream index one past the newest block, and the monotonic time it arrived."""
        self._down_since: float | None = None
        """Monotonic time the current outage began (``None``: not in an outage)."""
        self._outage_attempts = 0

    @property
    def realtime(self) -> bool:
        """Audio arrives at the pace of the air (a stream, a sound card), not as fast as read."""
        return self._source.realtime

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        while True:
            self.state.progress_monotonic = self._monotonic()
            if self._source.realtime:
                self._advance_over_outage()
            delivered = False
            clean_eof = False
            try:
                async for samples in self._session_with_stall_timeout():
                    if isinstance(samples, SourceGap):
                        self._next_sample += samples.samples
                        continue
                    if samples.size == 0:
                        continue
                    if not delivered:
                        delivered = True
                        self._backoff.reset()
                        self._came_back()
                        self._set_up(up=True, error=None)
                    block = self._stamp(samples)
                    self._update_silence(samples)
                    yield block
                clean_eof = True
            except SourceError as exc:
                self.state.last_error = str(exc)
                self._outage_began(f"source failed: {exc}")
            self._set_up(up=False, error=self.state.last_error)
            if clean_eof and self._until_eof:
                return
            if clean_eof:
                self._outage_began("stream ended")
            delay_s = self._backoff.next_delay_s()
            self.state.reconnects += 1
            self._outage_attempts += 1
            log.debug("reconnect %d in %.1f s", self.state.reconnects, delay_s)
            await self._sleep_with_progress(delay_s)

    def _outage_began(self, reason: str) -> None:
        """The first failure of an outage is a warning; repeats while it lasts are debug lines."""
        if self._down_since is None:
            self._down_since = self._monotonic()
            self._outage_attempts = 0
            log.warning("%s; reconnecting with backoff", reason)
        else:
            log.debug("%s (still down)", reason)

    def _came_back(self) -> None:
        """Said once per outage, when the first audio of a new session arrives."""
        if self._down_since is not None:
            log.info("source is back after %.1f s (%d reconnect attempt(s))",
                     self._monotonic() - self._down_since, self._outage_attempts)
            self._down_since = None

    def _advance_over_outage(self) -> None:
        """Keep the stream clock on the wall clock across an outage.

        The outage began when the last block arrived, not when the session was declared dead: a
        stalled stream is only noticed ``stall_timeout_s`` later, and that time was on the air too.
        """
        if self._last_audio is None:
            return
        sample_then, monotonic_then = self._last_audio
        elapsed_s = self._monotonic() - monotonic_then
        self._next_sample = max(self._next_sample, sample_then + round(elapsed_s * self._params.sample_rate))

    async def _session_with_stall_timeout(self) -> AsyncIterator[np.ndarray | SourceGap]:
        iterator = aiter(self._source.session())
        try:
            while True:
                try:
                    async with asyncio.timeout(self._params.stall_timeout_s):
                        samples = await anext(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise SourceError(
                        f"no audio for {self._params.stall_timeout_s:.0f} s (stall timeout)"
                    ) from None
                yield samples
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()

    async def _sleep_with_progress(self, delay_s: float) -> None:
        """Backoff is legitimate progress: keep the watchdog's view fresh while waiting."""
        deadline = self._monotonic() + delay_s
        while (remaining := deadline - self._monotonic()) > 0:
            self.state.progress_monotonic = self._monotonic()
            await asyncio.sleep(min(remaining, 1.0))

    def _stamp(self, samples: np.ndarray) -> AudioBlock:
        now = self._wall_clock()
        rate = self._params.sample_rate
        if self._source.realtime:
            captured_at = now - timedelta(seconds=samples.size / rate)
        else:
            # A file read as fast as possible: its own timeline, anchored where reading began.
            if self._origin is None:
                self._origin = now - timedelta(seconds=self._next_sample / rate)
            captured_at = self._origin + timedelta(seconds=self._next_sample / rate)
        block = AudioBlock(self._next_sample, samples, captured_at)
        self._next_sample += samples.size
        self._last_audio = (self._next_sample, self._monotonic())
        self.state.last_audio_at = now
        self.state.progress_monotonic = self._monotonic()
        return block

    def _update_silence(self, samples: np.ndarray) -> None:
        if block_dbfs(samples) < self._params.silence_threshold_dbfs:
            self._silent_samples += samples.size
        else:
            self._silent_samples = 0
        silent = self._silent_samples >= self._params.silence_after_s * self._params.sample_rate
        if silent != self.state.silent:
            self.state.silent = silent
            log.info("silence" if silent else "audio again")
            self._changed()

    def _set_up(self, *, up: bool, error: str | None) -> None:
        self.state.last_error = error
        if up != self.state.up:
            self.state.up = up
            if not up:
                self._silent_samples = 0
                self.state.silent = False
            self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self._on_change()
