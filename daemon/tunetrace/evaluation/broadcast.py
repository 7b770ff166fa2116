"""A simulated broadcast with interruptions, through the real pipeline and the real history.

``python -m tunetrace.evaluation.broadcast --config CFG --minutes 60`` renders a schedule of the
catalog's own music (``evaluation.live``), cuts it where a daemon restart and a crash (kill -9)
happen, each with audio lost while no daemon listened, drops 5 s of the air inside a run (a stream
outage: the source delivers nothing, the air goes on), and runs each part as one "daemon run":
the history is opened (crash recovery), a station is built with its last play (continuity), the
part is read as fast as possible on its own stream clock (wall time = ``EPOCH`` + schedule time),
and the run ends either cleanly (``finish``: ``shutdown``) or like a kill -9 (nothing more is
written).  The history must then hold exactly the true airings, each once, and the report's plays
and airtime per track must match the schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.io import wavfile

from tunetrace.config import Config, SourceConfig, StationConfig, load_config
from tunetrace.evaluation.live import EPOCH, CollectingSink, Segment, emit_json, make_schedule, render
from tunetrace.events import PlayEvent
from tunetrace.history import open_history
from tunetrace.history.report import build_report
from tunetrace.history.report import render as render_report
from tunetrace.history.sink import HistorySink
from tunetrace.pipeline import SharedModel, build_station, open_model
from tunetrace.publish.base import FanoutSink
from tunetrace.sources import SourceGap

log = logging.getLogger(__name__)

Ending = Literal["restart", "crash"]
Interruption = Literal["restart", "crash", "outage"]


@dataclass(frozen=True)
class Cut:
    """At ``at_s`` (schedule time) ``gap_s`` of the air is lost: the daemon run ends there and the
    next starts ``gap_s`` later (``restart``, ``crash``), or the run goes on while its source
    delivers nothing for ``gap_s`` (``outage``)."""

    at_s: float
    ending: Interruption
    gap_s: float


@dataclass(frozen=True)
class Part:
    start_s: float
    end_s: float
    ending: Ending | None
    """How this run ends (``None``: cleanly, at the end of the broadcast)."""
    outages: tuple[tuple[float, float], ...] = ()
    """``(at_s, gap_s)`` from the part's start: the stream outages inside this run."""


def plan_cuts(segments: list[Segment], endings: list[tuple[Interruption, float]]) -> list[Cut]:
    """Put each interruption inside a different long catalog track, 12 s after it starts, so
    that the airing goes on after the gap and continuity, not a boundary, is what is tested."""
    long_tracks = [s for s in segments if s.kind == "track" and s.end_s - s.start_s >= 30.0]
    if len(long_tracks) < len(endings):
        raise ValueError(f"the schedule has {len(long_tracks)} catalog tracks of 30 s or more; "
                         f"{len(endings)} interruptions need as many")
    step = len(long_tracks) // len(endings)
    chosen = [long_tracks[(i * step + step // 2) % len(long_tracks)] for i in range(len(endings))]
    return [Cut(s.start_s + 12.0, ending, gap_s) for s, (ending, gap_s) in zip(chosen, endings, strict=True)]


def parts_of(duration_s: float, cuts: list[Cut]) -> list[Part]:
    parts: list[Part] = []
    start, outages = 0.0, []
    for cut in sorted(cuts, key=lambda c: c.at_s):
        if cut.ending == "outage":
            outages.append((cut.at_s - start, cut.gap_s))
            continue
        parts.append(Part(start, cut.at_s, cut.ending, tuple(outages)))
        start, outages = cut.at_s + cut.gap_s, []
    parts.append(Part(start, duration_s, None, tuple(outages)))
    return parts


@dataclass(frozen=True)
class ScheduledSource:
    """A part's audio read as fast as possible, with its stream outages: at each ``(at_s, gap_s)``
    the source skips ``gap_s`` of the air and says so (``SourceGap``), as a stream that stalled and
    came back would (the runner puts the gap on the stream clock; the ring marks it)."""

    audio: np.ndarray
    sample_rate: int
    outages: tuple[tuple[float, float], ...]
    block_samples: int = 4096

    @property
    def description(self) -> str:
        return "simulated broadcast"

    @property
    def realtime(self) -> bool:
        return False

    async def session(self) -> AsyncIterator[np.ndarray | SourceGap]:
        position = 0
        end_s = self.audio.size / self.sample_rate
        for at_s, gap_s in (*sorted(self.outages), (end_s, 0.0)):
            stop = min(self.audio.size, round(at_s * self.sample_rate))
            while position < stop:
                block = self.audio[position : min(stop, position + self.block_samples)]
                position += block.size
                yield block
                await asyncio.sleep(0)
            if position >= self.audio.size:
                return
            gap = round(gap_s * self.sample_rate)
            position += gap
            yield SourceGap(gap)


async def run_part(
    config: Config, model: SharedModel, wav: Path, part: Part, station: str,
) -> list[PlayEvent]:
    """One daemon run over ``wav`` (the part's audio, decoded by ffmpeg as a file station would
    be; a part with stream outages is played by ``ScheduledSource``); returns its events."""
    history = HistorySink.from_url(config.history_url(), [station], config.history)
    collecting = CollectingSink()
    sink = FanoutSink([history, collecting])
    await history.start()
    for play in history.recovered:
        await sink.publish_event(PlayEvent("play_ended", play))
    origin = EPOCH + timedelta(seconds=part.start_s)
    executor = ThreadPoolExecutor(max_workers=1)
    built = build_station(
        StationConfig(name=station, source=SourceConfig(kind="ffmpeg", url=str(wav), realtime=False)),
        config, model, sink, executor, until_eof=True, wall_clock=lambda: origin,
        progress=history, resume=history.last_play(station), source=scheduled_source(wav, part),
    )
    collecting.station = built
    await built.run()
    if part.ending != "crash":
        await built.finish()
    # A crash writes nothing more: its open play stays open in the history, as after a kill -9.
    await history.close(5.0)
    executor.shutdown()
    return [event for _, event in collecting.events]


def scheduled_source(wav: Path, part: Part) -> ScheduledSource | None:
    """The source of a part with stream outages (``None``: the station's own ffmpeg source)."""
    if not part.outages:
        return None
    rate, audio = wavfile.read(wav)
    return ScheduledSource(np.asarray(audio, np.float32), int(rate), part.outages)


async def broadcast(
    config: Config, model: SharedModel, audio: np.ndarray, sample_rate: int, parts: list[Part],
    folder: Path, station: str = "broadcast",
) -> list[PlayEvent]:
    events: list[PlayEvent] = []
    for index, part in enumerate(parts):
        wav = folder / f"part{index}.wav"
        piece = audio[round(part.start_s * sample_rate) : round(part.end_s * sample_rate)]
        wavfile.write(wav, sample_rate, piece)
        events.extend(await run_part(config, model, wav, part, station))
    return events


@dataclass(frozen=True)
class Simulation:
    segments: list[Segment]
    cuts: list[Cut]
    events: list[PlayEvent]
    duration_s: float


def simulate(
    config: Config, model: SharedModel, catalog: list[tuple[int, Path, float]], unknown: list[Path],
    minutes: float, seed: int, folder: Path, station: str = "broadcast",
) -> Simulation:
    """Render a schedule of ``minutes``, interrupt it by a restart, a stream outage and a crash (5 s
    of audio lost at each), run it through the pipeline into ``config``'s history."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
    segments = make_schedule(catalog, unknown, minutes * 60, rng)
    sources = {p.name: p for _, p, _ in catalog} | {p.name: p for p in unknown}
    rate = model.encoder.info.sample_rate
    audio = render(segments, sources, rate, None, rng)
    duration_s = audio.size / rate
    cuts = plan_cuts(segments, [("restart", 5.0), ("outage", 5.0), ("crash", 5.0)])
    events = asyncio.run(broadcast(config, model, audio, rate, parts_of(duration_s, cuts), folder, station))
    return Simulation(segments, cuts, events, duration_s)


@dataclass(frozen=True)
class TrackCheck:
    track_id: int
    true_plays: int
    plays: int
    true_airtime_s: float
    airtime_s: float

    @property
    def airtime_error_s(self) -> float:
        return abs(self.airtime_s - self.true_airtime_s)


def compare(segments: list[Segment], config: Config, station: str) -> list[TrackCheck]:
    """Per catalog track: the schedule's airings and airtime against the history's report."""
    store = open_history(config.history_url())
    start, end = EPOCH - timedelta(days=1), EPOCH + timedelta(days=2)
    try:
        report = build_report(store.plays(start, end, [station]), store.intervals(start, end, [station]),
                              start, end, "track", now=end)
    finally:
        store.close()
    truth: dict[int, list[float]] = {}
    for segment in segments:
        if segment.kind == "track" and segment.track_id is not None:
            truth.setdefault(segment.track_id, []).append(segment.end_s - segment.start_s)
    rows = {r.track_id: r for r in report.rows}
    checks = []
    for track_id in sorted(set(truth) | set(rows)):
        row = rows.get(track_id)
        checks.append(TrackCheck(
            track_id, len(truth.get(track_id, [])), row.plays if row else 0,
            sum(truth.get(track_id, [])), row.airtime_s if row else 0.0,
        ))
    return checks


def airing_errors(segments: list[Segment], config: Config, station: str) -> list[float]:
    """For each true airing, the larger of its start and end errors (seconds) against the history's
    play of that track that overlaps it most (``inf``: no play overlaps it)."""
    store = open_history(config.history_url())
    try:
        plays = store.plays(EPOCH - timedelta(days=1), EPOCH + timedelta(days=2), [station])
    finally:
        store.close()
    errors = []
    for segment in (s for s in segments if s.kind == "track"):
        best, best_overlap = float("inf"), 0.0
        for play in plays:
            if play.track_id != segment.track_id or play.ended_at is None:
                continue
            start_s = (play.started_at - EPOCH).total_seconds()
            end_s = (play.ended_at - EPOCH).total_seconds()
            overlap = min(end_s, segment.end_s) - max(start_s, segment.start_s)
            if overlap > best_overlap:
                best_overlap = overlap
                best = max(abs(start_s - segment.start_s), abs(end_s - segment.end_s))
        errors.append(best)
    return errors


def monitored_s(config: Config, station: str) -> tuple[float, float]:
    """Seconds the history says the station was monitored (source up) and down."""
    store = open_history(config.history_url())
    try:
        intervals = store.intervals(EPOCH - timedelta(days=1), EPOCH + timedelta(days=2), [station])
    finally:
        store.close()
    return (sum(i.seconds for i in intervals if i.source_up),
            sum(i.seconds for i in intervals if not i.source_up))


def report_table(config: Config, station: str) -> str:
    store = open_history(config.history_url())
    start, end = EPOCH - timedelta(days=1), EPOCH + timedelta(days=2)
    try:
        report = build_report(store.plays(start, end, [station]), store.intervals(start, end, [station]),
                              start, end, "track", now=datetime.now(UTC))
    finally:
        store.close()
    return render_report(report, "table")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunetrace.evaluation.broadcast", description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--config", "-c", type=Path, required=True,
                        help="config whose catalog holds the tracks; its history.url receives the run "
                             "(use a fresh data_dir or history.url)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--unknown", type=Path, nargs="*", default=[], help="music NOT in the catalog")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the per-track comparison here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("grpc", "pymilvus", "milvus_lite"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    config = load_config(args.config)
    model, store = open_model(config, resident=True)
    catalog = [(t.track_id, Path(t.source_path), t.duration_s) for t in store.tracks()
               if Path(t.source_path).is_file() and t.duration_s > 30]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunetrace-broadcast-") as folder:
        run = simulate(config, model, catalog, list(args.unknown), args.minutes, args.seed, Path(folder))
    wall_s = time.perf_counter() - started
    store.close()
    checks = compare(run.segments, config, "broadcast")
    errors = airing_errors(run.segments, config, "broadcast")
    up_s, down_s = monitored_s(config, "broadcast")
    print(report_table(config, "broadcast"))
    result: dict[str, Any] = {
        "stream_s": round(run.duration_s, 1),
        "wall_s": round(wall_s, 1),
        "cuts": [{"at_s": round(c.at_s, 1), "ending": c.ending, "gap_s": c.gap_s} for c in run.cuts],
        "end_reasons": sorted({e.play.end_reason or "" for e in run.events if e.kind == "play_ended"}),
        "tracks": [{**c.__dict__, "airtime_error_s": round(c.airtime_error_s, 2)} for c in checks],
        "monitored_s": round(up_s, 1),
        "monitored_truth_s": round(run.duration_s - sum(c.gap_s for c in run.cuts), 1),
        "down_s": round(down_s, 1),
        "plays_match": all(c.plays == c.true_plays for c in checks),
        "airings": len(errors),
        "airing_boundary_error_max_s": round(max(errors, default=0.0), 2),
        "airing_boundary_error_median_s": round(float(np.median(errors)), 2) if errors else None,
        "max_airtime_error_per_play_s": round(max(
            (c.airtime_error_s / max(1, c.true_plays) for c in checks), default=0.0), 2),
    }
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
