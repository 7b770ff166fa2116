"""One station's pipeline: source -> ring buffer -> horizon voter -> tracker -> sink.

``Station`` is the asynchronous shell around the synchronous ``HorizonVoter``: a capture task
writes the ring buffer (never blocking), a recognition task reads windows, hands them with its
voter to the ``RecognitionBatcher`` every station shares (one embedding call and one search for
all stations' windows per tick, in the shared executor), feeds its observations to the
``PlayTracker`` and turns the tracker's events into ``Play`` records for the sink.
``build_station`` assembles one from its config section and the shared model (``open_model``: the
encoder, the catalog and its shape).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from tunetrace.audio.windows import WindowSpec
from tunetrace.backoff import Backoff, BackoffPolicy
from tunetrace.config import Config, StationConfig, data_dir_problem
from tunetrace.encoders import Encoder, create_encoder
from tunetrace.errors import CatalogError, ConfigError
from tunetrace.events import Play, PlayEvent, StationHealth
from tunetrace.history.base import Checkpoint, ProgressSink, continues, resumable
from tunetrace.observe.base import (
    NullMetrics,
    NullStationMetrics,
    PipelineMetrics,
    StationMetrics,
    source_state,
)
from tunetrace.observe.logs import station_scope
from tunetrace.observe.timing import TimedCatalog, TimedEncoder
from tunetrace.publish.base import EventSink
from tunetrace.publish.evidence import EvidenceRecorder
from tunetrace.redact import redact_url
from tunetrace.ringbuffer import RingBuffer, WindowBatch
from tunetrace.sources import create_source, runner_params
from tunetrace.sources.base import AudioBlock, AudioSource, SourceRunner
from tunetrace.store import Catalog, CatalogShape, Track, catalog_shape, open_catalog
from tunetrace.store.resident import ResidentCatalog
from tunetrace.tracker import (
    Observation,
    PlayEnded,
    PlayReidentified,
    PlayStarted,
    PlayTracker,
    SharedAudio,
    TrackerEvent,
    TrackerParams,
)
from tunetrace.voting import HorizonVoter, horizon_params
from tunetrace.voting.batcher import BatcherParams, RecognitionBatcher

if TYPE_CHECKING:
    from tunetrace.store.milvus import CatalogStore

log = logging.getLogger(__name__)

_TICK_S = 1.0
"""How often a station with no new audio re-checks its tracker (a source outage ends plays)."""
CATALOG_RETRY = BackoffPolicy(initial_s=0.5, max_s=10.0)
HEARD_ON_RESUMPTION_S = 2.0
"""A play whose evidence starts this close to the first audio of a run (or of the source coming
back) was already playing when monitoring resumed (``history.continues``)."""
"""Waits between attempts while catalog searches fail (a Milvus server restarting)."""


class StreamClock:
    """Maps stream time to UTC wall time using the newest block's arrival stamp."""

    def __init__(self, sample_rate: int, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._rate = sample_rate
        self._monotonic = monotonic
        self._anchor_s = 0.0
        self._anchor_at: datetime | None = None
        self._anchor_monotonic = 0.0

    def update(self, block: AudioBlock) -> None:
        self._anchor_s = block.start_sample / self._rate
        self._anchor_at = block.captured_at
        self._anchor_monotonic = self._monotonic() - block.samples.size / self._rate

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
        return self._anchor_s + (self._monotonic() - self._anchor_monotonic)


@dataclass
class StationStats:
    windows_processed: int = 0
    last_progress_monotonic: float = 0.0
    """Last time the recognition task finished a batch of windows (the watchdog's input)."""


@dataclass(frozen=True)
class StationParams:
    """How a station paces its work; derived once by ``build_station``."""

    spec: WindowSpec
    """The live window spec: the encoder's rate and window, the tracker's live hop."""
    batch_windows: int
    """Most windows embedded and searched in one executor call."""
    min_batch_windows: int
    """Live audio is searched in batches of at least this many windows (``search_interval_s``)."""
    max_pending_windows: int
    """A file read as fast as possible waits while this many windows are unread (live never waits)."""
    health_interval_s: float
    continue_within_s: float = 0.0
    """An interrupted play heard again within this long, where the clock predicts, is continued."""
    position_tolerance_s: float = 3.0
    """How far from the predicted position a continued play may be (``tracker.position_jump_s``)."""
    checkpoint_interval_s: float = 1.0
    """Stream seconds between two checkpoints to the ``ProgressSink``."""
    catalog_outage_watchdog_s: float = 300.0
    """A catalog outage counts as progress for the watchdog this long; past it, the pings stop and
    systemd restarts the daemon (a fresh start reopens the catalog from scratch)."""


class Station:
    """One station's pipeline; ``run()`` until cancelled, then ``finish()`` ends its open play."""

    def __init__(
        self,
        name: str,
        runner: SourceRunner,
        ring: RingBuffer,
        voter: HorizonVoter,
        tracker: PlayTracker,
        catalog: Catalog,
        sink: EventSink,
        executor: Executor,
        params: StationParams,
        *,
        batcher: RecognitionBatcher | None = None,
        metrics: StationMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        progress: ProgressSink | None = None,
        resume: Play | None = None,
        evidence: EvidenceRecorder | None = None,
    ) -> None:
        """``progress`` receives checkpoints (the history); ``resume`` is the station's last play
        before this start, continued if it was interrupted and is heard again where predicted."""
        self.name = name
        self.evidence = evidence
        """Keeps the audio around each play start (``None``: the station keeps none)."""
        self._metrics = metrics or NullStationMetrics()
        self._runner = runner
        self._health_changed = runner.changed
        """Set by the runner on every source change and here on every catalog change."""
        self._ring = ring
        self._matcher = voter
        self._tracker = tracker
        self._catalog = catalog
        self._sink = sink
        self._executor = executor
        self._batcher = batcher
        """Shared by the stations: their windows embedded and searched together (``None``: this
        station's voter embeds and searches alone, in the executor)."""
        self._params = params
        self._rate = params.spec.sample_rate
        self._window_s = params.spec.window_s
        self._monotonic = monotonic
        self._clock = StreamClock(self._rate, monotonic=monotonic)
        self._data = asyncio.Event()
        self._room = asyncio.Event()
        self._open: Play | None = None
        self._tracks: dict[int, Track] = {}
        self.stats = StationStats(last_progress_monotonic=monotonic())
        self._catalog_up = True
        self._catalog_down_since = 0.0
        self._catalog_retry = Backoff(CATALOG_RETRY)
        self._last_stream_s = 0.0
        self._capture_done = False
        self._progress = progress
        self._resume = resumable(resume)
        self._next_checkpoint_s: float | None = None
        self._resumed_s = 0.0
        """Stream time monitoring (re)started: the run's first audio, or the source coming back."""
        self._source_was_up = True
        self._heard = False
        self._up_from_s: float | None = None
        """Where the audio of a (re)started source begins, until a checkpoint has recorded it."""
        self._dropped_reported = 0

    def health(self) -> StationHealth:
        state = self._runner.state
        return StationHealth(
            source_up=state.up, silent=state.silent, dropped_windows=self._ring.dropped_windows,
            windows_processed=self.stats.windows_processed, last_audio_at=state.last_audio_at,
            reconnects=state.reconnects, catalog_up=self._catalog_up,
        )

    @property
    def now_playing(self) -> Play | None:
        """The open play (``None``: nothing recognised is playing)."""
        return self._open

    async def run(self) -> None:
        """Capture, recognition and health for this station, until cancelled or the source ends."""
        # Every line its tasks (and its executor calls, run in a copy of the context) log names it.
        with station_scope(self.name):
            await self._run()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._capture(), name=f"{self.name}-capture")
            recognise = group.create_task(self._recognise(), name=f"{self.name}-recognise")
            health = group.create_task(self._health(), name=f"{self.name}-health")
            evidence = (group.create_task(self.evidence.run(), name=f"{self.name}-evidence")
                        if self.evidence is not None else None)
            await recognise
            health.cancel()
            if evidence is not None:
                evidence.cancel()

    @property
    def stream_s(self) -> float:
        """Stream time of the newest decision (end of the newest processed window)."""
        return self._last_stream_s

    def stream_s_at(self, wall: datetime) -> float | None:
        """Where on this station's stream a wall-clock time (a play's ``started_at``) falls."""
        return self._clock.stream_s_at(wall)

    def progressing(self, stall_s: float) -> bool:
        """For the watchdog: windows were processed, or the source is legitimately (re)connecting."""
        now = self._monotonic()
        return (now - self.stats.last_progress_monotonic < stall_s
                or (not self._runner.state.up and now - self._runner.state.progress_monotonic < stall_s))

    async def _capture(self) -> None:
        """Write blocks into the ring. Live audio never waits (the reader skips when behind); a file
        read as fast as possible is the exception: it waits for room so that no window is lost."""
        try:
            async for block in self._runner.blocks():
                self._clock.update(block)
                self._ring.write(block.start_sample, block.samples)
                if self.evidence is not None:
                    self.evidence.audio(block.start_sample, block.samples)
                self._data.set()
                while not self._runner.realtime and self._ring_is_half_full():
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._capture_done = True
            self._data.set()

    def _ring_is_half_full(self) -> bool:
        return self._ring.pending_windows() >= self._params.max_pending_windows // 2

    async def _recognise(self) -> None:
        while True:
            try:
                async with asyncio.timeout(_TICK_S):
                    await self._data.wait()
            except TimeoutError:
                pass
            self._data.clear()
            if self._batch_incomplete():
                continue
            batch = self._ring.read(self._params.batch_windows)
            self._report_drops()
            self._room.set()
            if len(batch) == 0:
                if self._capture_done:
                    return
                now_s = self._clock.now_s()
                if not self._runner.state.up and self._runner.realtime and now_s is not None:
                    # The source is down: time still passes on the air; an open play is held for
                    # continue_within_s, then ends. The outage began where the audio stopped (a
                    # stall is declared stall_timeout_s later), and is recorded from there.
                    if self._source_was_up and self._heard:
                        self._source_was_up = False
                        stopped_s = self._ring.write_index / self._rate
                        await self._apply(self._tracker.observe(Observation(stopped_s, source_up=False)))
                        await self._checkpoint(stopped_s, source_up=False, force=True)
                    await self._apply(self._tracker.observe(Observation(now_s, source_up=False)))
                    await self._checkpoint(now_s, source_up=False)
                continue
            await self._follow_source(batch)
            try:
                observations = await self._observations(batch)
            except CatalogError as exc:
                await self._catalog_failed(exc, batch)
                continue
            if not self._catalog_up:
                self._catalog_up = True
                self._catalog_retry.reset()
                log.info("the catalog answers again; recognition resumes")
                self._health_changed.set()
            self.stats.windows_processed += len(batch)
            self.stats.last_progress_monotonic = self._monotonic()
            self._metrics.audio(len(batch) * self._params.spec.hop_s)
            for observation in observations:
                self._last_stream_s = observation.stream_s
                await self._apply(self._tracker.observe(observation))
            await self._checkpoint(self._last_stream_s, source_up=self._source_was_up)
            if self._ring.pending_windows():
                self._data.set()

    async def _observations(self, batch: WindowBatch) -> list[Observation]:
        """The voter's decisions over ``batch``: embedded and searched with the other stations'
        windows through the shared batcher, or alone in the executor."""
        if self._batcher is not None:
            return await self._batcher.process(self._matcher, batch, self._metrics)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, contextvars.copy_context().run, self._matcher.process, batch,
        )

    async def _follow_source(self, batch: WindowBatch) -> None:
        """Note where this batch's audio begins, stops and resumes, for the history's monitored
        time: the first audio of the run, and any outage the ring marked (a source that stalled
        and came back between two ticks is seen only here, as a gap in the stream). The tracker
        learns of such an outage from the voter's decisions, in stream order."""
        for start_sample, down in zip(batch.start_samples, batch.outage_mask(), strict=True):
            if down and self._source_was_up and self._heard:
                self._source_was_up = False
                await self._checkpoint(float(start_sample) / self._rate, source_up=False, force=True)
            elif not down and (not self._source_was_up or not self._heard):
                self._heard = self._source_was_up = True
                self._resumed_s = float(start_sample) / self._rate
                self._up_from_s = self._resumed_s

    def _batch_incomplete(self) -> bool:
        """Wait for ``search_interval_s`` of new windows while live audio keeps coming."""
        pending = self._ring.pending_windows()
        return (
            0 < pending < self._params.min_batch_windows
            and self._runner.realtime and self._runner.state.up and not self._capture_done
        )

    async def _catalog_failed(self, error: CatalogError, batch: WindowBatch) -> None:
        """Milvus is unreachable or restarting: the batch is lost, not the station.

        Time still passes on the air, so the tracker sees an observation without evidence (an open
        play ends after ``end_after_s``); each attempt counts as progress for the watchdog (the
        longest wait, 10 s, is well inside it) for ``catalog_outage_watchdog_s``: a server being
        restarted comes back by itself (and a dead Milvus Lite server is restarted by the store),
        but a longer outage stops the pings, so systemd restarts the daemon rather than leaving
        it ``catalog_down`` for ever.
        """
        now = self._monotonic()
        if self._catalog_up:
            self._catalog_up = False
            self._catalog_down_since = now
            log.warning("catalog search failed, retrying with backoff: %s", error)
            self._health_changed.set()
        self._ring.dropped_windows += len(batch)
        self._report_drops()
        stream_s = float(batch.start_samples[-1]) / self._rate + self._window_s
        await self._apply(self._tracker.observe(Observation(stream_s)))
        if now - self._catalog_down_since < self._params.catalog_outage_watchdog_s:
            self.stats.last_progress_monotonic = now
        elif self.stats.last_progress_monotonic > self._catalog_down_since:
            log.error("%s: the catalog has failed for %.0f s; no longer feeding the watchdog "
                      "(service.catalog_outage_watchdog_s)", self.name, now - self._catalog_down_since)
            self.stats.last_progress_monotonic = self._catalog_down_since
        await asyncio.sleep(self._catalog_retry.next_delay_s())

    def _report_drops(self) -> None:
        dropped = self._ring.dropped_windows
        self._metrics.dropped(dropped - self._dropped_reported)
        self._dropped_reported = dropped

    async def _health(self) -> None:
        while True:
            health = self.health()
            self._metrics.state(source_state(health))
            await self._sink.publish_health(self.name, health)
            try:
                async with asyncio.timeout(self._params.health_interval_s):
                    await self._health_changed.wait()
            except TimeoutError:
                pass
            self._health_changed.clear()

    def catalog_changed(self, shape: CatalogShape, changed: frozenset[int]) -> None:
        """Tracks were added, removed or re-tagged: vote with the new shape and forget the cached
        metadata of the changed tracks (on the event loop)."""
        self._matcher.set_shape(shape)
        for track_id in changed:
            self._tracks.pop(track_id, None)

    def know_shared_audio(self, shared_audio: SharedAudio) -> None:
        """The catalog's shared audio, found (or found again) after the start: the tracker keeps a
        play through it whichever copy matches (on the event loop)."""
        self._tracker.know_shared_audio(shared_audio)

    async def finish(self) -> None:
        """End the open play (shutdown): publishes its ``play_ended`` and clears now-playing; writes
        the evidence still waiting for audio with what arrived."""
        with station_scope(self.name):
            await self._apply(self._tracker.close(self._last_stream_s))
            if self.evidence is not None:
                await self.evidence.flush(everything=True)
        await self._checkpoint(self._last_stream_s, source_up=self._source_was_up, force=True)

    async def _checkpoint(self, stream_s: float, *, source_up: bool, force: bool = False) -> None:
        """Tell the history the station's state at ``stream_s`` and its open play's last evidence,
        at most once per ``checkpoint_interval_s`` of stream time (unless ``force``).

        ``source_up`` is the state *at* ``stream_s`` (audio was processed there, or the source was
        down then), not the source's state now: a file read ahead of recognition ends while
        seconds of its audio are still to be processed."""
        if self._progress is None:
            return
        if not force and self._next_checkpoint_s is not None and stream_s < self._next_checkpoint_s:
            return
        self._next_checkpoint_s = stream_s + self._params.checkpoint_interval_s
        if source_up and self._up_from_s is not None:
            # Monitoring began with this audio, not with the first decision a batch later.
            await self._progress.checkpoint(Checkpoint(self.name, self._clock.wall(self._up_from_s), True))
        self._up_from_s = None
        current = self._tracker.current
        evidence_at = position_s = None
        if current is not None and self._open is not None:
            evidence_at = self._clock.wall(current.last_support_s)
            position_s = current.position_at(current.last_support_s)
        await self._progress.checkpoint(Checkpoint(
            station=self.name, at=self._clock.wall(stream_s), source_up=source_up,
            play_id=self._open.play_id if self._open is not None and evidence_at else None,
            evidence_at=evidence_at, position_s=position_s,
        ))

    async def _apply(self, events: list[TrackerEvent]) -> None:
        for event in events:
            if isinstance(event, PlayEnded):
                await self._ended(event)
            elif isinstance(event, PlayReidentified):
                await self._reidentified(event)
            else:
                await self._started(event)
        if events and self._open is None:
            self._metrics.confidence(0.0)
            await self._sink.publish_now_playing(self.name, None)

    async def _started(self, event: PlayStarted) -> None:
        track = await self._track(event.play.track_id)
        started_at = self._clock.wall(event.play.started_s)
        interrupted, self._resume = self._resume, None
        if interrupted is not None and continues(
            interrupted, event.play.track_id, started_at, event.position_start_s,
            within_s=self._params.continue_within_s, position_tolerance_s=self._params.position_tolerance_s,
            heard_on_resumption=event.play.started_s - self._resumed_s <= HEARD_ON_RESUMPTION_S,
        ):
            play = replace(
                interrupted, ended_at=None, position_end_s=None, end_reason=None, resumed_at=started_at,
                confidence=max(interrupted.confidence, event.play.confidence),
            )
            log.info("%r continues after an interruption (%s)", play.title, interrupted.end_reason)
        else:
            play = Play(
                play_id=uuid4().hex, station=self.name, **_naming(event.play.track_id, track),
                started_at=started_at,
                position_start_s=event.position_start_s, confidence=event.play.confidence,
                speed_ratio=event.play.speed_ratio,
            )
            log.info("now playing %r (position %.1f s)", play.title, play.position_start_s)
        self._open = play
        if self.evidence is not None:
            self.evidence.play_started(play.play_id, play.started_at, event.play.started_s)
        self._metrics.play_started()
        self._metrics.confidence(play.confidence)
        await self._sink.publish_event(PlayEvent("play_started", play))
        await self._sink.publish_now_playing(self.name, play)

    async def _reidentified(self, event: PlayReidentified) -> None:
        """The open play is another catalog track (shared audio, ``tracker``): its ``play_started``
        is published again with the same ``play_id`` and start, naming the new track, so every
        consumer that keys plays by id (history, play log, MQTT) corrects the record in place."""
        if self._open is None:
            return
        track = await self._track(event.play.track_id)
        play = replace(
            self._open, **_naming(event.play.track_id, track),
            position_start_s=max(0.0, self._open.position_start_s + event.offset_s),
            confidence=event.play.confidence,
            speed_ratio=event.play.speed_ratio,
        )
        log.info("re-identified as %r: it shares its audio with track %d and now matches better",
                 play.title, event.previous_track_id)
        self._open = play
        self._metrics.confidence(play.confidence)
        await self._sink.publish_event(PlayEvent("play_started", play))
        await self._sink.publish_now_playing(self.name, play)

    async def _ended(self, event: PlayEnded) -> None:
        if self._open is None:
            return
        play = replace(
            self._open, confidence=max(self._open.confidence, event.play.confidence),
            speed_ratio=event.play.speed_ratio,
        ).ended(
            self._clock.wall(event.ended_s), event.position_end_s, event.reason,
        )
        self._open = None
        if play.end_reason == "source_down":
            self._resume = play  # the same airing may still be heard after the outage
        log.info("ended %r after %.1f s (%s)", play.title, play.duration_s or 0.0,
                 play.end_reason)
        await self._sink.publish_event(PlayEvent("play_ended", play))

    async def _track(self, track_id: int) -> Track | None:
        if track_id not in self._tracks:
            loop = asyncio.get_running_loop()
            try:
                found = await loop.run_in_executor(
                    self._executor, contextvars.copy_context().run, self._catalog.get_tracks, [track_id],
                )
            except CatalogError as exc:
                # The play is still recorded (by track id); only its title and artist are missing.
                log.warning("cannot read track %d's metadata: %s", track_id, exc)
                return None
            if track_id in found:
                self._tracks[track_id] = found[track_id]
        return self._tracks.get(track_id)


def _naming(track_id: int, track: Track | None) -> dict[str, Any]:
    """The fields of a ``Play`` that name its recording (blank where the catalog no longer has it)."""
    if track is None:
        return {"track_id": track_id, "title": "", "artist": "", "album": "", "isrc": ""}
    return {"track_id": track_id, "title": track.title, "artist": track.artist, "album": track.album,
            "isrc": track.isrc}


BATCH_WINDOWS_MAX = 64
RING_CAPACITY_S = 30.0
"""Audio each station's ring holds: room to catch up after a slow batch without dropping."""


@dataclass(frozen=True)
class SharedModel:
    encoder: Encoder
    catalog: Catalog
    shape: CatalogShape
    """At start; stations get every later change through ``Station.catalog_changed``."""
    tracks: tuple[Track, ...] = ()
    """The complete tracks the shape was read from (what later changes are compared with)."""


def build_station(
    station: StationConfig, config: Config, model: SharedModel, sink: EventSink,
    executor: Executor, *, until_eof: bool = False,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    monotonic: Callable[[], float] = time.monotonic,
    progress: ProgressSink | None = None, resume: Play | None = None,
    metrics: PipelineMetrics | None = None, source: AudioSource | None = None,
    batcher: RecognitionBatcher | None = None, shared_audio: SharedAudio | None = None,
) -> Station:
    """One station's pipeline: its own source runner, ring, voter and tracker around the shared model.

    ``shared_audio``: the catalog's shared audio when already known (the daemon finds it after
    the start and hands it over through ``Station.know_shared_audio``).

    ``batcher`` (``shared_batcher``) embeds and searches every station's windows together; without
    one the station's voter embeds and searches its own, one executor call per batch.

    The live window spec is derived once here (the encoder's rate and window, the tracker's hop)
    and every stage gets it, or its own config section, from here. ``source`` replaces the one
    the station's config describes (a simulated broadcast that plays an outage).
    """
    info = model.encoder.info
    tracker_config = config.tracker
    spec = WindowSpec(info.sample_rate, info.window_s, tracker_config.window_hop_s)
    batch_windows = min(BATCH_WINDOWS_MAX, config.encoder.batch_size)
    params = StationParams(
        spec=spec,
        batch_windows=batch_windows,
        min_batch_windows=max(1, min(batch_windows, round(
            tracker_config.search_interval_s / tracker_config.window_hop_s))),
        max_pending_windows=config.service.max_pending_windows,
        health_interval_s=config.service.health_interval_s,
        continue_within_s=tracker_config.continue_within_s,
        position_tolerance_s=tracker_config.position_jump_s,
        checkpoint_interval_s=config.history.checkpoint_interval_s,
        catalog_outage_watchdog_s=config.service.catalog_outage_watchdog_s,
    )
    source = source or create_source(station.source, spec.sample_rate)
    runner = SourceRunner(
        source, runner_params(station.source, spec.sample_rate), until_eof=until_eof, wall_clock=wall_clock,
        monotonic=monotonic,
    )
    ring = RingBuffer(
        max(round(RING_CAPACITY_S * spec.sample_rate), spec.window_samples + 2 * spec.hop_samples),
        spec, params.max_pending_windows,
    )
    metrics = metrics or NullMetrics()
    station_metrics = metrics.station(station.name)
    voter = HorizonVoter(
        TimedEncoder(model.encoder, metrics), TimedCatalog(model.catalog, station_metrics), model.shape,
        horizon_params(
            model.encoder, config.matcher, tracker_config, station.source.silence_threshold_dbfs,
        ),
    )
    tracker = PlayTracker(TrackerParams.from_config(tracker_config), shared_audio=shared_audio)
    evidence = None
    if station.evidence is not None:
        evidence = EvidenceRecorder(
            station.name, station.evidence, station.evidence.folder or config.data_dir / "evidence",
            spec.sample_rate, wall_clock=wall_clock,
        )
    return Station(
        station.name, runner, ring, voter, tracker, model.catalog, sink, executor, params,
        batcher=batcher, metrics=station_metrics, monotonic=monotonic, evidence=evidence, progress=progress,
        resume=resume,
    )


def shared_batcher(
    model: SharedModel, executor: Executor, config: Config, metrics: PipelineMetrics | None = None,
) -> RecognitionBatcher:
    """The one ``RecognitionBatcher`` all of a process's stations submit their windows to."""
    return RecognitionBatcher(
        TimedEncoder(model.encoder, metrics or NullMetrics()), model.catalog, executor,
        BatcherParams(gather_s=config.service.batch_gather_s, embed_windows=config.encoder.batch_size),
    )


def open_model(config: Config, *, resident: bool = False) -> tuple[SharedModel, CatalogStore]:
    """Blocking: load the encoder, open the catalog (refusing another encoder's), read its shape.

    An empty or new catalog is created rather than refused: tracks can be ingested while the
    daemon runs (``tunetrace ingest`` hands them to it), so starting before the first ingest is fine.
    ``resident``: a long-running process (the daemon): searches of an embedded (Milvus Lite)
    catalog are answered from a copy in memory while it holds at most
    ``milvus.resident_max_vectors`` (``store.resident``; 0: never). A server's catalog is searched
    by the server: its index is built for it, other daemons share it, and its searches cost this
    process only the client's side.
    """
    data_dir_ready(config.data_dir)
    encoder = create_encoder(config.encoder, config.data_dir)
    store = open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=True, live=resident)
    try:
        tracks = store.tracks()
        shape = catalog_shape(tracks)
        catalog: Catalog = store
        if resident and store.is_embedded and config.milvus.resident_max_vectors > 0:
            resident_copy = ResidentCatalog(store, tracks, encoder.info.dimension, encoder.info.metric,
                                            max_vectors=config.milvus.resident_max_vectors)
            catalog = resident_copy
            if resident_copy.vectors:
                log.info("live searches: an exact copy of the catalog's %d vectors in memory",
                         resident_copy.vectors)
    except BaseException:
        store.close()
        raise
    if not shape.track_vectors:
        log.warning("the catalog at %s is empty: nothing can be recognised until tracks are ingested "
                    "(`tunetrace ingest --config <this config> FILE...` works while the daemon runs)",
                    redact_url(config.milvus_uri()))
    outgrown = store.size_warning(shape.total_vectors)
    if outgrown:
        log.warning("%s", outgrown)
    return SharedModel(encoder, catalog, shape, tuple(tracks)), store


def data_dir_ready(path: Path) -> None:
    """Create the data directory (systemd's ``StateDirectory=`` normally already has); one that
    cannot be written is a configuration error (exit 78), reported before anything is opened."""
    problem = data_dir_problem(path)
    if problem is not None:
        raise ConfigError(problem)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data_dir: cannot create {path}: {exc.strerror}; set data_dir") from None
