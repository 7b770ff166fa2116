"""Continuous recognition for one station: source -> ring -> windows -> embed -> search -> vote -> tracker.

``LiveMatcher`` is the synchronous core (run in an executor, never on the event loop): it embeds a
batch of windows, searches the catalog, and votes over the sliding horizon once per window, so a
batch of many windows (a fast backfill, or catching up) yields exactly the decisions real-time
processing would have made.  Silent windows are not embedded: they vote for nothing, which is
what lets a play end in silence.

``Station`` is the asynchronous shell: a capture task writes the ring buffer (never blocking), a
recognition task reads windows, hands them to the matcher in the shared executor, feeds the
decisions to the ``PlayTracker`` and turns its events into ``Play`` records for the sink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import uuid4

import numpy as np

from tunetrace.backoff import Backoff, BackoffPolicy
from tunetrace.config import MatcherConfig, StationConfig, TrackerConfig
from tunetrace.encoders.base import Encoder
from tunetrace.errors import CatalogError
from tunetrace.events import Play, PlayEvent
from tunetrace.matcher import Candidate, CatalogShape, VotingParams, vote
from tunetrace.ringbuffer import RingBuffer, WindowBatch
from tunetrace.sinks import EventSink, StationHealth
from tunetrace.sources.base import AudioBlock, AudioSource, RunnerParams, SourceRunner
from tunetrace.store import Hit, Track
from tunetrace.tracker import (
    Evidence,
    Observation,
    PlayEnded,
    PlayStarted,
    PlayTracker,
    TrackerEvent,
    TrackerParams,
)
from tunetrace.windows import WindowSpec

log = logging.getLogger(__name__)

_MAX_CANDIDATES = 3
_ALIGNMENTS_PER_TRACK = 6
"""Positions reported per track and decision. Looped music matches at several positions at once;
if the play's own position drops out of this list while the track is still heard, the tracker
takes the track as moved and corrects the position to a repeat (3 was too few for a looped
warzone piece: the e2e play ended 23 s, one loop, off its true position)."""
_PLAUSIBLE_WINDOWS = 2
_DISTINCT_ALIGNMENT_S = 1.0
"""Alignments of one track closer than this are the same position (within voting tolerance)."""
_EDGE_FRACTION = 0.25
"""Where a play's evidence starts and ends within its first and last supporting windows. A window
still matches with a quarter of it outside the track (the fingerprint is trained on windows shifted
by up to a quarter of their length), so the first supporting window starts up to a quarter window
before the track does and the last ends up to a quarter window after it; without this correction
every play started ~0.25 s early and ended ~0.2 s late on the benchmark streams."""
DECISION_INTERVAL_S = 0.2
"""Stream time between two decisions; the tracker's confirmations are counted in decisions."""
_TICK_S = 1.0
"""How often a station with no new audio re-checks its tracker (a source outage ends plays)."""
CATALOG_RETRY = BackoffPolicy(initial_s=0.5, max_s=10.0)
"""Waits between attempts while catalog searches fail (a Milvus server restarting)."""


class Catalog(Protocol):
    """What the live pipeline needs from ``CatalogStore``."""

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]: ...

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]: ...


@dataclass(frozen=True)
class LiveParams:
    sample_rate: int
    window_s: float
    horizon_s: float
    top_k: int
    silence_threshold_dbfs: float
    voting: VotingParams
    windows_per_decision: int = 1
    """Vote after every this many windows (voting costs more than a window's embedding)."""


class LiveMatcher:
    """Sliding-horizon voting over a stream of windows; not thread-safe (one per station)."""

    def __init__(self, encoder: Encoder, catalog: Catalog, shape: CatalogShape, params: LiveParams) -> None:
        self._encoder = encoder
        self._catalog = catalog
        self._shape = shape
        self._params = params
        self._history: deque[tuple[float, list[Hit]]] = deque()
        self._since_decision = 0
        self._silence_rms = 10.0 ** (params.silence_threshold_dbfs / 20.0)

    def process(self, batch: WindowBatch) -> list[Observation]:
        """One observation per ``windows_per_decision`` windows, in stream order (blocking: call from
        an executor)."""
        if len(batch) == 0:
            return []
        rms = np.sqrt(np.mean(np.square(batch.windows, dtype=np.float64), axis=1))
        audible = np.flatnonzero(rms >= self._silence_rms)
        hits: list[list[Hit]] = [[] for _ in range(len(batch))]
        if audible.size:
            vectors = self._encoder.embed(batch.windows[audible])
            found = self._catalog.search(vectors, self._params.top_k)
            for row, window_hits in zip(audible, found, strict=True):
                hits[int(row)] = window_hits
        rate = self._params.sample_rate
        observations = []
        for start_sample, window_hits in zip(batch.start_samples, hits, strict=True):
            start_s = float(start_sample) / rate
            self._history.append((start_s, window_hits))
            oldest_s = start_s + self._params.window_s - self._params.horizon_s
            while self._history and self._history[0][0] < oldest_s:
                self._history.popleft()
            self._since_decision += 1
            if self._since_decision >= self._params.windows_per_decision:
                self._since_decision = 0
                observations.append(Observation(start_s + self._params.window_s, self._decide()))
        return observations

    def _decide(self) -> tuple[Evidence, ...]:
        times = np.array([t for t, _ in self._history])
        window_hits = self._plausible_hits()
        ranked = vote(window_hits, times, self._params.voting, self._shape, max_candidates=_MAX_CANDIDATES)
        evidence: list[Evidence] = []
        for candidate in ranked:
            evidence.extend(self._alignments(candidate))
        return tuple(evidence)

    def _plausible_hits(self) -> list[list[Hit]]:
        """The horizon's hits, without those at alignments that no two catalog windows agree on.

        Voting scores every track that appears among the neighbours, and most appear by chance at
        one catalog window; a track needs at least two distinct catalog windows at one alignment
        (to within a catalog hop) to reach any useful confidence, so hits at other alignments are
        dropped before voting (a 10-50x saving, same best alignments).
        The window count, which the chance correction uses, is unchanged.
        """
        hop_s = self._params.voting.catalog_hop_s
        windows_at: dict[tuple[int, int], set[int]] = {}
        for t, window_hits in self._history:
            for h in window_hits:
                key = (h.track_id, round((h.offset_s - t) / hop_s))
                windows_at.setdefault(key, set()).add(round(h.offset_s / hop_s))
        plausible: set[tuple[int, int]] = set()
        for (track_id, band), windows in windows_at.items():
            if len(windows | windows_at.get((track_id, band + 1), set())) >= _PLAUSIBLE_WINDOWS:
                plausible.update((track_id, b) for b in (band - 1, band, band + 1, band + 2))
        return [
            [h for h in window_hits if (h.track_id, round((h.offset_s - t) / hop_s)) in plausible]
            for t, window_hits in self._history
        ]

    def _alignments(self, candidate: Candidate) -> list[Evidence]:
        """The candidate's alignment plus the track's other well-supported alignments.

        Music repeats itself (choruses, loops), so one track can match the horizon at several
        positions; reporting them lets the tracker keep a play whose position is still supported
        instead of mistaking the repeat for a jump.  Each alignment gets the candidate's confidence
        scaled by its share of supporting windows, and where in the horizon that support lies.
        """
        voting = self._params.voting
        rows = [
            (t, h.offset_s - t) for t, window_hits in self._history for h in window_hits
            if h.track_id == candidate.track_id and h.similarity >= voting.min_similarity
        ]
        if not rows:
            return []
        data = np.array(rows, dtype=np.float64)
        times, alignments = data[:, 0], data[:, 1]
        time_ids = np.unique(times, return_inverse=True)[1]
        bands = np.unique(np.round(alignments / voting.catalog_hop_s)) * voting.catalog_hop_s
        band_of_pair, row_of_pair = np.nonzero(
            np.abs(alignments[None, :] - bands[:, None]) <= voting.offset_tolerance_s
        )
        heard = np.zeros((bands.size, int(time_ids.max()) + 1), dtype=bool)
        heard[band_of_pair, time_ids[row_of_pair]] = True
        by_support = np.argsort(-heard.sum(axis=1), kind="stable")
        centres = [candidate.alignment_s, *bands[by_support].tolist()]
        chosen: list[tuple[float, np.ndarray]] = []
        for centre in centres:
            if len(chosen) == _ALIGNMENTS_PER_TRACK:
                break
            if any(abs(centre - other) <= _DISTINCT_ALIGNMENT_S for other, _ in chosen):
                continue
            supporting = np.unique(times[np.abs(alignments - centre) <= voting.offset_tolerance_s])
            if supporting.size:
                chosen.append((centre, supporting))
        main = max(1, chosen[0][1].size) if chosen else 1
        window_s = self._params.window_s
        edge_s = _EDGE_FRACTION * window_s
        return [
            Evidence(
                candidate.track_id, centre, candidate.confidence * min(1.0, supporting.size / main),
                candidate.aligned_windows if i == 0 else int(supporting.size),
                first_aligned_s=float(supporting[0]) + edge_s,
                last_aligned_s=float(supporting[-1]) + window_s - edge_s,
                speed_ratio=candidate.speed_ratio,
            )
            for i, (centre, supporting) in enumerate(chosen)
        ]


class StreamClock:
    """Maps stream time to UTC wall time using the newest block's arrival stamp."""

    def __init__(self, sample_rate: int) -> None:
        self._rate = sample_rate
        self._anchor_s = 0.0
        self._anchor_at: datetime | None = None
        self._anchor_monotonic = 0.0

    def update(self, block: AudioBlock) -> None:
        self._anchor_s = block.start_sample / self._rate
        self._anchor_at = block.captured_at
        self._anchor_monotonic = time.monotonic() - block.samples.size / self._rate

    def wall(self, stream_s: float) -> datetime:
        anchor = self._anchor_at or datetime.now(UTC)
        return anchor + timedelta(seconds=stream_s - self._anchor_s)

    def stream_s_at(self, wall: datetime) -> float | None:
        """The inverse of ``wall``: where on the stream a wall-clock time falls (``None`` before the
        first block)."""
        if self._anchor_at is None:
            return None
        return self._anchor_s + (wall - self._anchor_at).total_seconds()

    def now_s(self) -> float | None:
        """Stream time now, extrapolated from the newest block (used while a source is down);
        ``None`` before the first block (there is no stream clock yet)."""
        if self._anchor_at is None:
            return None
        return self._anchor_s + (time.monotonic() - self._anchor_monotonic)


@dataclass
class StationStats:
    windows_processed: int = 0
    last_progress_monotonic: float = 0.0
    """Last time the recognition task finished a batch of windows (the watchdog's input)."""


class Station:
    """One station's pipeline; ``run()`` until cancelled, then ``finish()`` ends its open play."""

    def __init__(
        self,
        config: StationConfig,
        source: AudioSource,
        runner_params: RunnerParams,
        matcher: LiveMatcher,
        catalog: Catalog,
        tracker_config: TrackerConfig,
        sink: EventSink,
        executor: Executor,
        *,
        sample_rate: int,
        window_s: float,
        ring_capacity_s: float,
        max_pending_windows: int,
        batch_windows: int,
        health_interval_s: float,
        until_eof: bool = False,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.name = config.name
        self._health_changed = asyncio.Event()
        self._runner = SourceRunner(
            source, runner_params, on_change=self._health_changed.set, until_eof=until_eof,
            wall_clock=wall_clock,
        )
        self._realtime = source.realtime
        self._matcher = matcher
        self._catalog = catalog
        self._tracker = PlayTracker(TrackerParams.from_config(tracker_config))
        self._sink = sink
        self._executor = executor
        self._rate = sample_rate
        spec_hop = tracker_config.window_hop_s
        self._ring = RingBuffer(
            max(round(ring_capacity_s * sample_rate), round((window_s + 2 * spec_hop) * sample_rate)),
            WindowSpec(sample_rate, window_s, spec_hop), max_pending_windows,
        )
        self._batch_windows = batch_windows
        self._min_batch_windows = max(1, min(batch_windows, round(
            tracker_config.search_interval_s / tracker_config.window_hop_s)))
        """Live audio is searched in batches of at least this many windows (``search_interval_s``)."""
        self._window_s = window_s
        self._health_interval_s = health_interval_s
        self._clock = StreamClock(sample_rate)
        self._data = asyncio.Event()
        self._room = asyncio.Event()
        self._max_pending = max_pending_windows
        self._open: Play | None = None
        self._tracks: dict[int, Track] = {}
        self.stats = StationStats(last_progress_monotonic=time.monotonic())
        self._catalog_up = True
        self._catalog_retry = Backoff(CATALOG_RETRY)
        self._last_stream_s = 0.0
        self._capture_done = False

    def health(self) -> StationHealth:
        state = self._runner.state
        return StationHealth(
            source_up=state.up, silent=state.silent, dropped_windows=self._ring.dropped_windows,
            windows_processed=self.stats.windows_processed, last_audio_at=state.last_audio_at,
            reconnects=state.reconnects, catalog_up=self._catalog_up,
        )

    async def run(self) -> None:
        """Capture, recognition and health for this station, until cancelled or the source ends."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._capture(), name=f"{self.name}-capture")
            recognise = group.create_task(self._recognise(), name=f"{self.name}-recognise")
            health = group.create_task(self._health(), name=f"{self.name}-health")
            await recognise
            health.cancel()

    @property
    def stream_s(self) -> float:
        """Stream time of the newest decision (end of the newest processed window)."""
        return self._last_stream_s

    def stream_s_at(self, wall: datetime) -> float | None:
        """Where on this station's stream a wall-clock time (a play's ``started_at``) falls."""
        return self._clock.stream_s_at(wall)

    def progressing(self, stall_s: float) -> bool:
        """For the watchdog: windows were processed, or the source is legitimately (re)connecting."""
        now = time.monotonic()
        return (now - self.stats.last_progress_monotonic < stall_s
                or (not self._runner.state.up and now - self._runner.state.progress_monotonic < stall_s))

    async def _capture(self) -> None:
        """Write blocks into the ring. Live audio never waits (the reader skips when behind); a file
        read as fast as possible is the exception: it waits for room so that no window is lost."""
        try:
            async for block in self._runner.blocks():
                self._clock.update(block)
                self._ring.write(block.start_sample, block.samples)
                self._data.set()
                while not self._realtime and self._ring.pending_windows() >= self._max_pending // 2:
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._capture_done = True
            self._data.set()

    async def _recognise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(_TICK_S):
                    await self._data.wait()
            except TimeoutError:
                pass
            self._data.clear()
            if self._batch_incomplete():
                continue
            batch = self._ring.read(self._batch_windows)
            self._room.set()
            if len(batch) == 0:
                if self._capture_done:
                    return
                now_s = self._clock.now_s()
                if not self._runner.state.up and self._realtime and now_s is not None:
                    # The source is down: time still passes on the air, so an open play ends.
                    await self._apply(self._tracker.observe(Observation(now_s)))
                continue
            try:
                observations = await loop.run_in_executor(self._executor, self._matcher.process, batch)
            except CatalogError as exc:
                await self._catalog_failed(exc, batch)
                continue
            if not self._catalog_up:
                self._catalog_up = True
                self._catalog_retry.reset()
                log.info("%s: the catalog answers again; recognition resumes", self.name)
                self._health_changed.set()
            self.stats.windows_processed += len(batch)
            self.stats.last_progress_monotonic = time.monotonic()
            for observation in observations:
                self._last_stream_s = observation.stream_s
                await self._apply(self._tracker.observe(observation))
            if self._ring.pending_windows():
                self._data.set()

    def _batch_incomplete(self) -> bool:
        """Wait for ``search_interval_s`` of new windows while live audio keeps coming."""
        pending = self._ring.pending_windows()
        return (
            0 < pending < self._min_batch_windows
            and self._realtime and self._runner.state.up and not self._capture_done
        )

    async def _catalog_failed(self, error: CatalogError, batch: WindowBatch) -> None:
        """Milvus is unreachable or restarting: the batch is lost, not the station.

        Time still passes on the air, so the tracker sees an observation without evidence (an open
        play ends after ``end_after_s``); each attempt counts as progress for the watchdog (the
        longest wait, 10 s, is well inside it), since restarting the daemon would not bring the
        catalog back.
        """
        if self._catalog_up:
            self._catalog_up = False
            log.warning("%s: catalog search failed, retrying with backoff: %s", self.name, error)
            self._health_changed.set()
        self._ring.dropped_windows += len(batch)
        stream_s = float(batch.start_samples[-1]) / self._rate + self._window_s
        await self._apply(self._tracker.observe(Observation(stream_s)))
        self.stats.last_progress_monotonic = time.monotonic()
        await asyncio.sleep(self._catalog_retry.next_delay_s())

    async def _health(self) -> None:
        while True:
            await self._sink.publish_health(self.name, self.health())
            try:
                async with asyncio.timeout(self._health_interval_s):
                    await self._health_changed.wait()
            except TimeoutError:
                pass
            self._health_changed.clear()

    async def finish(self) -> None:
        """End the open play (shutdown): publishes its ``play_ended`` and clears now-playing."""
        await self._apply(self._tracker.close(self._last_stream_s))

    async def _apply(self, events: list[TrackerEvent]) -> None:
        for event in events:
            if isinstance(event, PlayEnded):
                await self._ended(event)
            else:
                await self._started(event)
        if events and self._open is None:
            await self._sink.publish_now_playing(self.name, None)

    async def _started(self, event: PlayStarted) -> None:
        track = await self._track(event.play.track_id)
        play = Play(
            play_id=uuid4().hex, station=self.name, track_id=event.play.track_id,
            title=track.title if track else "", artist=track.artist if track else "",
            album=track.album if track else "", started_at=self._clock.wall(event.play.started_s),
            position_start_s=event.position_start_s, confidence=event.play.confidence,
            speed_ratio=event.play.speed_ratio,
        )
        self._open = play
        log.info("%s: now playing %r (position %.1f s)", self.name, play.title, play.position_start_s)
        await self._sink.publish_event(PlayEvent("play_started", play))
        await self._sink.publish_now_playing(self.name, play)

    async def _ended(self, event: PlayEnded) -> None:
        if self._open is None:
            return
        play = replace(self._open, confidence=max(self._open.confidence, event.play.confidence)).ended(
            self._clock.wall(event.ended_s), event.position_end_s,
        )
        self._open = None
        log.info("%s: ended %r after %.1f s", self.name, play.title, play.duration_s or 0.0)
        await self._sink.publish_event(PlayEvent("play_ended", play))

    async def _track(self, track_id: int) -> Track | None:
        if track_id not in self._tracks:
            loop = asyncio.get_running_loop()
            try:
                found = await loop.run_in_executor(self._executor, self._catalog.get_tracks, [track_id])
            except CatalogError as exc:
                # The play is still recorded (by track id); only its title and artist are missing.
                log.warning("%s: cannot read track %d's metadata: %s", self.name, track_id, exc)
                return None
            if track_id in found:
                self._tracks[track_id] = found[track_id]
        return self._tracks.get(track_id)


def live_params(
    encoder: Encoder, matcher: MatcherConfig, tracker: TrackerConfig, silence_threshold_dbfs: float,
) -> LiveParams:
    info = encoder.info
    return LiveParams(
        sample_rate=info.sample_rate, window_s=info.window_s,
        horizon_s=max(tracker.horizon_s, info.window_s + tracker.window_hop_s),
        top_k=matcher.top_k, silence_threshold_dbfs=silence_threshold_dbfs,
        voting=VotingParams.from_config(matcher, info.hop_s),
        windows_per_decision=max(1, round(DECISION_INTERVAL_S / tracker.window_hop_s)),
    )
