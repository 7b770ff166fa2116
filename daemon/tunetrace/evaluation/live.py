"""Live-recognition benchmark: a synthetic broadcast with a known schedule through the real pipeline.

``python -m tunetrace.evaluation.live --config CFG --minutes 30`` builds a "radio stream" from the
catalog's own files: excerpts of catalog tracks (random positions and lengths), silence gaps,
real music that is not in the catalog (``--unknown``) and noise bursts, optionally buried in white
noise at ``--snr-db``.  The stream is written to a WAV file and read by the real ``FfmpegSource``
as fast as possible through the same ``Station`` (ring buffer, embed, search, vote, tracker) the
daemon runs, so every figure is measured on the stream clock, independent of machine speed:

* now-playing latency: stream time of the ``play_started`` decision minus the true track start;
* false plays (a play with no overlapping true segment of that track) and flapping (a true
  segment reported as more than one play);
* per-second precision/recall of the play log against the true schedule;
* CPU: process CPU seconds per second of audio (the share of one core a station needs) and the
  stations one core sustains at that rate, with and without the ffmpeg decoder children, split by
  thread (event loop, embedding workers, client library threads) and helper process (Milvus
  Lite's server); RSS after loading and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.io import wavfile

from tunetrace.audio.decode import _tool, decode_file
from tunetrace.catalog.overlaps import Overlap, OverlapCatalog, OverlapParams, find_overlaps
from tunetrace.catalog.scan import scan_paths
from tunetrace.catalog.shared import SharedStretch, shared_audio
from tunetrace.config import Config, SourceConfig, StationConfig, load_config
from tunetrace.evaluation.degrade import mix_at_snr
from tunetrace.evaluation.run import SpeechPool
from tunetrace.events import Play, PlayEvent, StationHealth
from tunetrace.pipeline import Station
from tunetrace.tracker import SharedAudio as TrackerSharedAudio

if TYPE_CHECKING:
    from tunetrace.pipeline import SharedModel

log = logging.getLogger(__name__)

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
"""Wall-clock origin of the simulated stream: play times map back to stream seconds exactly."""


@dataclass(frozen=True)
class Segment:
    kind: str
    """``track`` (in the catalog), ``unknown`` (music not in it), ``silence`` or ``noise``."""
    start_s: float
    end_s: float
    track_id: int | None = None
    position_s: float = 0.0
    """For ``track``: where in the track the segment begins."""
    label: str = ""


@dataclass
class CollectingSink:
    """An ``EventSink`` that keeps every event with the stream time it was decided at."""

    station: Station | None = None
    events: list[tuple[float, PlayEvent]] = field(default_factory=list)

    async def publish_event(self, event: PlayEvent) -> None:
        self.events.append((self.station.stream_s if self.station else 0.0, event))

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        return None

    async def publish_health(self, station: str, health: StationHealth) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self, deadline_s: float) -> None:
        return None


def make_schedule(
    catalog: list[tuple[int, Path, float]], unknown: list[Path], duration_s: float, rng: random.Random,
) -> list[Segment]:
    """A plausible broadcast: mostly catalog music, with gaps, unknown music and noise between."""
    segments: list[Segment] = []
    now = 0.0
    previous_track: int | None = None
    while now < duration_s:
        roll = rng.random()
        if roll < 0.65 or not unknown:
            choices = [c for c in catalog if c[0] != previous_track] or catalog
            track_id, path, length_s = rng.choice(choices)
            take = min(rng.uniform(25.0, 70.0), length_s - 1.0)
            position = rng.uniform(0.0, max(0.0, length_s - take - 1.0))
            segments.append(Segment("track", now, now + take, track_id, position, path.name))
            previous_track = track_id
        elif roll < 0.8:
            path = rng.choice(unknown)
            segments.append(Segment("unknown", now, now + rng.uniform(15.0, 40.0), None, 0.0, path.name))
            previous_track = None
        elif roll < 0.9:
            segments.append(Segment("noise", now, now + rng.uniform(4.0, 10.0)))
            previous_track = None
        else:
            segments.append(Segment("silence", now, now + rng.uniform(2.0, 6.0)))
            previous_track = None
        now = segments[-1].end_s
        if rng.random() < 0.3:  # a short gap between items, as stations often have
            segments.append(Segment("silence", now, now + rng.uniform(0.5, 2.5)))
            now = segments[-1].end_s
    return segments


@dataclass(frozen=True)
class TalkOver:
    """A presenter talking over every catalog track's intro and outro, as music radio does."""

    pool: SpeechPool
    """Held-out recorded speech (never the speech the model was trained on)."""
    snr_db: float
    """Music to speech, over the part talked over (0 dB: equally loud)."""
    seconds: float = 10.0
    """How long the presenter talks at each end of a track (at most half of it each)."""


def talk_over_ends(
    piece: np.ndarray, talk: TalkOver, sample_rate: int, rng: np.random.Generator,
) -> np.ndarray:
    """``piece`` with speech mixed over its first and last ``talk.seconds``."""
    span = min(round(talk.seconds * sample_rate), piece.size // 2)
    if span == 0:
        return piece
    out = piece.copy()
    out[:span] = mix_at_snr(piece[:span], talk.pool.talk_over(span, rng), talk.snr_db)
    out[-span:] = mix_at_snr(piece[-span:], talk.pool.talk_over(span, rng), talk.snr_db)
    return out


def render(
    segments: list[Segment], sources: dict[str, Path], sample_rate: int, snr_db: float | None,
    rng: random.Random, talk: TalkOver | None = None,
) -> np.ndarray:
    """The schedule as audio; decoded files are cached so a long stream stays cheap to build.

    ``talk``: a presenter over each catalog track's intro and outro (drawn after the noise, so the
    rest of the stream is the same with or without it)."""
    decoded: dict[str, np.ndarray] = {}
    noise_rng = np.random.default_rng(rng.randrange(2**32))
    speech_rng = np.random.default_rng(rng.randrange(2**32)) if talk is not None else None
    parts = []
    for segment in segments:
        n = round((segment.end_s - segment.start_s) * sample_rate)
        if segment.kind in ("track", "unknown"):
            if segment.label not in decoded:
                decoded[segment.label] = decode_file(sources[segment.label], sample_rate)
            audio = decoded[segment.label]
            first = round(segment.position_s * sample_rate) if segment.kind == "track" else 0
            if segment.kind == "unknown":
                first = min(max(0, audio.size - n), round(30 * sample_rate))
            piece = audio[first : first + n]
            piece = np.pad(piece, (0, n - piece.size))
            piece = 0.8 * piece / max(1e-6, float(np.max(np.abs(piece))))
            if talk is not None and speech_rng is not None and segment.kind == "track":
                piece = talk_over_ends(piece, talk, sample_rate, speech_rng)
            parts.append(piece)
        elif segment.kind == "noise":
            parts.append((0.1 * noise_rng.standard_normal(n)).astype(np.float32))
        else:
            parts.append(np.zeros(n, np.float32))
    stream = np.concatenate(parts).astype(np.float32)
    if snr_db is not None:
        music = np.concatenate([p for p, s in zip(parts, segments, strict=True) if s.kind == "track"])
        signal_power = float(np.mean(np.square(music))) if music.size else 1e-4
        noise_power = signal_power / 10 ** (snr_db / 10)
        stream = stream + (np.sqrt(noise_power) * noise_rng.standard_normal(stream.size)).astype(np.float32)
    return np.clip(stream, -1.0, 1.0)


@dataclass(frozen=True)
class PlayRecord:
    track_id: int
    start_s: float
    end_s: float
    decided_s: float
    """When the play was first published (a re-identified play: under its first name)."""
    position_start_s: float
    reidentified_from: tuple[int, ...] = ()
    """Tracks the play was named before ``track_id`` (the tracker re-identified it: shared audio)."""


def plays_from_events(
    events: list[tuple[float, PlayEvent]], stream_s_at: Callable[[datetime], float | None] | None = None,
) -> list[PlayRecord]:
    """``stream_s_at`` maps a play's wall-clock times back onto the stream (the station's own clock);
    without it wall time counts from ``EPOCH``, which holds only for a file read as fast as possible
    (on a paced stream the first audio arrives after the source's start-up, a few tenths of a second)."""

    def on_stream(wall: datetime) -> float:
        mapped = stream_s_at(wall) if stream_s_at is not None else None
        return mapped if mapped is not None else (wall - EPOCH).total_seconds()

    decided: dict[str, float] = {}
    named: dict[str, list[int]] = {}
    """Per open play: the tracks it has been published as, in order."""
    plays = []
    for stream_s, event in events:
        play_id = event.play.play_id
        if event.kind == "play_started":
            if play_id in named:  # the same open play again: re-identified
                named[play_id].append(event.play.track_id)
            else:
                decided[play_id] = stream_s
                named[play_id] = [event.play.track_id]
        elif event.play.ended_at is not None:
            earlier = [track for track in named.pop(play_id, []) if track != event.play.track_id]
            plays.append(PlayRecord(
                event.play.track_id, on_stream(event.play.started_at), on_stream(event.play.ended_at),
                decided[play_id], event.play.position_start_s, tuple(dict.fromkeys(earlier)),
            ))
    return sorted(plays, key=lambda p: p.start_s)


SharedPairs = frozenset[frozenset[int]]
"""Pairs of track ids whose recordings share audio (``catalog.overlaps``)."""


def score(
    segments: list[Segment], plays: list[PlayRecord], duration_s: float, shared: SharedPairs = frozenset(),
) -> dict[str, Any]:
    """``shared``: a false play of a track that shares audio with a track on air during it is
    counted as a false play and also as ``false_plays_of_shared_audio`` (most likely a catalog
    duplicate, not a confusion of different music; whether the play lies inside the shared stretch
    is not checked)."""
    tracks = [s for s in segments if s.kind == "track"]

    def overlaps(play: PlayRecord, segment: Segment) -> bool:
        return min(play.end_s, segment.end_s) > max(play.start_s, segment.start_s)

    latencies, position_errors, missed, flapping = [], [], 0, 0
    for segment in tracks:
        matching = [p for p in plays if p.track_id == segment.track_id and overlaps(p, segment)]
        if not matching:
            missed += 1
            continue
        flapping += len(matching) - 1
        first = matching[0]
        latencies.append(first.decided_s - segment.start_s)
        expected_position = segment.position_s + (first.start_s - segment.start_s)
        position_errors.append(abs(first.position_start_s - expected_position))
    false_plays = [p for p in plays if not any(s.track_id == p.track_id and overlaps(p, s) for s in tracks)]
    of_shared_audio = [
        p for p in false_plays
        if any(frozenset((p.track_id, s.track_id)) in shared and overlaps(p, s) for s in tracks)
    ]
    seconds = np.arange(int(duration_s)) + 0.5
    truth = np.full(seconds.size, -1, np.int64)
    predicted = np.full(seconds.size, -1, np.int64)
    ids: dict[int, int] = {}
    for segment in tracks:
        truth[(seconds >= segment.start_s) & (seconds < segment.end_s)] = ids.setdefault(
            segment.track_id or 0, len(ids))
    for play in plays:
        during = (seconds >= play.start_s) & (seconds < play.end_s)
        predicted[during] = ids.setdefault(play.track_id, len(ids))
    correct = int(np.sum((predicted >= 0) & (predicted == truth)))
    return {
        "catalog_segments": len(tracks),
        "reported_segments": len(tracks) - missed,
        "missed_segments": missed,
        "false_plays": len(false_plays),
        "false_plays_of_shared_audio": len(of_shared_audio),
        "false_play_details": [asdict(p) for p in false_plays],
        "flapping": flapping,
        "reidentified_plays": sum(1 for play in plays if play.reidentified_from),
        "latency_median_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 2) if latencies else None,
        "latency_max_s": round(max(latencies), 2) if latencies else None,
        "position_error_median_s": round(statistics.median(position_errors), 2) if position_errors else None,
        "per_second_precision": round(correct / max(1, int(np.sum(predicted >= 0))), 4),
        "per_second_recall": round(correct / max(1, int(np.sum(truth >= 0))), 4),
    }


STATION_SUMMARY_KEYS = ("reported_segments", "missed_segments", "false_plays", "false_plays_of_shared_audio",
                        "flapping", "latency_median_s", "latency_p95_s", "per_second_precision",
                        "per_second_recall")


def score_stations(segments: list[Segment], station_plays: list[list[PlayRecord]],
                   duration_s: float, shared: SharedPairs = frozenset()) -> dict[str, Any]:
    """Every station heard the same stream, so every station is scored, not only the first: the
    first's score is the headline, and stations that decided differently (shared search batches,
    contention) are counted and listed by their summary."""
    if not station_plays:
        raise ValueError("no station to score")
    scores = [score(segments, plays, duration_s, shared) for plays in station_plays]
    summaries = [{key: one[key] for key in STATION_SUMMARY_KEYS} for one in scores]
    return {
        **scores[0],
        "stations_scored": len(scores),
        "stations_differing": sum(summary != summaries[0] for summary in summaries[1:]),
        "per_station": summaries if len(summaries) > 1 else [],
    }


def shared_pairs(overlaps: Sequence[Overlap]) -> SharedPairs:
    """The pairs of tracks that share audio, so that the score can tell a catalog duplicate's
    play from a confusion."""
    return frozenset(frozenset((o.track.track_id, o.other.track_id)) for o in overlaps)


def catalog_shared_audio(
    catalog: OverlapCatalog, catalog_hop_s: float, *, for_tracker: bool, for_score: bool,
) -> tuple[SharedPairs | None, TrackerSharedAudio | None]:
    """The catalog's shared audio for the stations' trackers (as the daemon's, from its cache,
    with ``tracker.shared_audio``) and the pairs for the score (``--shared-audio``). One search of
    every track's windows (~100 per track against the whole catalog), made before the stream
    runs and its CPU is sampled."""
    if not (for_tracker or for_score):
        return None, None
    overlaps = find_overlaps(catalog, OverlapParams(catalog_hop_s))
    return (shared_pairs(overlaps) if for_score else None,
            shared_audio([SharedStretch.of(o) for o in overlaps]) if for_tracker else None)


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far of this process, its threads, and every process it started."""

    process_s: float
    threads_s: dict[str, float]
    """Per live Python thread (by name); the event loop runs in ``MainThread``."""
    helpers_s: float
    """Live descendants other than decoders (an embedded catalog server: Milvus Lite's binary)."""
    decoders_s: float
    """Decoder children (ffmpeg), live and already exited."""


def _thread_cpu_s(native_id: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        raw = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def cpu_sample() -> CpuSample:
    """Everything the benchmark's CPU figures are made of, read from ``/proc`` and ``getrusage``.

    Exited children (decoders of stations that ended) are only in ``RUSAGE_CHILDREN`` once reaped;
    live ones only in ``/proc``: the two never count the same process twice.
    """
    import threading

    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSample(
        process_s=time.process_time(),
        threads_s={t.name: _thread_cpu_s(t.native_id) for t in threading.enumerate() if t.native_id},
        helpers_s=helper_cpu_s(),
        decoders_s=helper_cpu_s(exclude=(), only=("ffmpeg",)) + reaped.ru_utime + reaped.ru_stime,
    )


def helper_cpu_s(exclude: tuple[str, ...] = ("ffmpeg",), only: tuple[str, ...] = ()) -> float:
    """CPU seconds of this process's live descendants (an embedded catalog server such as Milvus
    Lite 2.5's ``milvus`` binary), read from ``/proc``; processes named in ``exclude`` are not
    counted, and with ``only`` just those named there are."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    total, stack = 0.0, list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        name, cpu_s = stats.get(pid, ("", 0.0))
        if not name.startswith(exclude) and (not only or name.startswith(only)):
            total += cpu_s
        stack.extend(children.get(pid, []))
    return total


def rss_mib() -> float:
    """Resident set size now (Linux ``/proc``), falling back to the peak from ``getrusage``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run_stream(
    config: Config, wav: Path, stations: int = 1, model: SharedModel | None = None,
    *, realtime: bool = False, rss_samples: list[float] | None = None, rss_every_s: float = 300.0,
    cpu_at_end: list[CpuSample] | None = None, feed: str = "http", server_cpu_s: list[float] | None = None,
    encoded: Path | None = None, shared_audio: TrackerSharedAudio | None = None,
) -> tuple[list[CollectingSink], float]:
    """Run ``stations`` copies of the stream through the pipeline; each station's sink (its events,
    and the station for its clock), wall seconds.

    ``model``: an already opened encoder and catalog (opened, and closed after, when ``None``).
    ``realtime``: read the stream at its real pace (a 60-minute stream takes an hour, as on air).
    ``rss_samples``: filled with the resident memory every ``rss_every_s`` while the stream runs.
    ``cpu_at_end``: receives a ``CpuSample`` taken while the worker threads are still alive.
    ``feed``: how a ``realtime`` station gets its stream: ``http`` from a ``PacedStreamServer`` (as
    from a radio's stream server), ``file`` from the file paced by ffmpeg's ``-re``.
    ``server_cpu_s``: receives the CPU seconds the paced server's own code took (the radio's part).
    ``encoded``: with the ``http`` feed, the stream in a radio codec (``encode_stream``) to send
    instead of the 8 kHz WAV, which each station's ffmpeg then decodes and resamples.
    ``shared_audio``: the catalog's shared audio, for every station's tracker from the start.
    """
    from tunetrace.pipeline import build_station, open_model, shared_batcher

    closer = None
    if model is None:
        opened, closer = await asyncio.to_thread(partial(open_model, config, resident=True))
    else:
        opened = model
    sinks = []
    executor = ThreadPoolExecutor(max_workers=max(1, min(4, stations)), thread_name_prefix="embed")
    started_monotonic = time.monotonic()

    def clock() -> datetime:
        """Stream time as wall time: fixed for a file read as fast as possible (its blocks carry
        their own timeline), the elapsed time since the start when paced like a live stream."""
        return EPOCH + timedelta(seconds=time.monotonic() - started_monotonic) if realtime else EPOCH

    batcher = shared_batcher(opened, executor, config)
    server = PacedStreamServer(wav, encoded=encoded) if realtime and feed == "http" else None
    if server is not None:
        await server.start()
    built = []
    for index in range(stations):
        sink = CollectingSink()
        url = server.url(f"bench{index}") if server is not None else str(wav)
        station_config = StationConfig(
            name=f"bench{index}", source=SourceConfig(kind="ffmpeg", url=url, realtime=realtime),
        )
        station = build_station(
            station_config, config, opened, sink, executor, until_eof=True, wall_clock=clock,
            batcher=batcher, shared_audio=shared_audio,
        )
        sink.station = station
        sinks.append(sink)
        built.append(station)
    async def sample_rss() -> None:
        while rss_samples is not None:
            rss_samples.append(round(rss_mib(), 1))
            await asyncio.sleep(rss_every_s)

    started = time.perf_counter()
    sampler = asyncio.create_task(sample_rss())
    async with asyncio.TaskGroup() as group:
        for station in built:
            group.create_task(station.run())
    sampler.cancel()
    for station in built:
        await station.finish()
    wall_s = time.perf_counter() - started
    if server is not None:
        await server.close()
        if server_cpu_s is not None:
            server_cpu_s.append(server.cpu_s)
    if cpu_at_end is not None:
        cpu_at_end.append(cpu_sample())
    executor.shutdown()
    if closer is not None:
        closer.close()
    return sinks, wall_s


PACE_CHUNK_S = 0.25
"""Audio per write of the paced stream server (an Icecast server sends a few packets at a time)."""


STREAM_CODECS: dict[str, tuple[list[str], str]] = {
    "mp3": (["-c:a", "libmp3lame", "-b:a", "128k", "-ar", "44100", "-ac", "2"], "audio/mpeg"),
    "aac": (["-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-ac", "2", "-f", "adts"], "audio/aac"),
}
"""What a radio sends: ffmpeg encoder options and the HTTP content type, by file suffix."""


def encode_stream(wav: Path, codec: str) -> Path:
    """The rendered stream as a radio would send it (44.1 kHz stereo MP3 128k or AAC 64k).

    Encoded before the benchmark samples its CPU: the encoder is the radio's, not a decoder."""
    target = wav.with_suffix(f".{codec}")
    subprocess.run(
        [_tool("ffmpeg"), "-nostdin", "-loglevel", "error", "-y", "-i", str(wav),
         *STREAM_CODECS[codec][0], str(target)],
        check=True,
    )
    return target


class PacedStreamServer:
    """Serves a WAV file over HTTP at the pace of its audio, as a radio stream server does.

    ``--realtime`` stations read their stream from here rather than from the file with ffmpeg's
    ``-re``: ffmpeg paces a file by waking every 10 ms to ask whether the next packet is due (~0.25%
    of a core per station), where a network stream blocks on its socket until audio arrives, which
    is what a station on air costs. The server runs on the benchmark's event loop: it plays the
    radio's part, not the monitor's, so the CPU its own code takes (``cpu_s``, measured around each
    write) is reported apart; the event loop's share of waking it stays in the monitor's figure.
    ``encoded``: the same stream in a radio codec (``encode_stream``), served instead of the WAV so
    that each station's decoder does a radio stream's work (decode, downmix, resample).
    """

    def __init__(
        self, wav: Path, *, clock: Callable[[], float] = time.monotonic, encoded: Path | None = None,
    ) -> None:
        rate, audio = wavfile.read(wav, mmap=True)
        if encoded is None:
            self._data = wav.read_bytes()
            self._bytes_per_s = rate * audio.dtype.itemsize * (1 if audio.ndim == 1 else audio.shape[1])
            self._suffix, self._content_type = ".wav", "audio/wav"
        else:  # the same audio in a radio codec: paced at its mean byte rate over the stream
            self._data = encoded.read_bytes()
            self._bytes_per_s = len(self._data) / (audio.shape[0] / rate)
            self._suffix, self._content_type = encoded.suffix, STREAM_CODECS[encoded.suffix.lstrip(".")][1]
        self._clock = clock
        self._server: asyncio.Server | None = None
        self.port = 0
        self.cpu_s = 0.0
        """CPU seconds the server's own code took (the main thread's, between its awaits)."""

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}{self._suffix}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                while (await reader.readline()).strip():
                    pass  # the request line and headers: every path is the stream
            writer.write(f"HTTP/1.0 200 OK\r\nContent-Type: {self._content_type}\r\n"
                         f"Content-Length: {len(self._data)}\r\n\r\n".encode())
            chunk = max(1, round(PACE_CHUNK_S * self._bytes_per_s))
            started = self._clock()
            for first in range(0, len(self._data), chunk):
                due_s = started + first / self._bytes_per_s - self._clock()
                if due_s > 0:
                    await asyncio.sleep(due_s)
                started_cpu = time.thread_time()
                writer.write(self._data[first : first + chunk])
                self.cpu_s += time.thread_time() - started_cpu
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the reader went away (its station ended or failed): nothing to serve
        finally:
            writer.close()


def emit_json(result: dict[str, Any], path: Path | None) -> None:
    """A benchmark's result: printed, and written to ``path`` too when one is given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n", encoding="utf-8")


def cpu_breakdown(before: CpuSample, after: CpuSample) -> dict[str, Any]:
    """CPU seconds spent between two samples: the process, its helpers, its decoders, and the
    process split by thread (the event loop, the embedding workers, client library threads)."""
    threads = {
        name: round(after.threads_s[name] - before.threads_s.get(name, 0.0), 2) for name in after.threads_s
    }
    return {
        "process_s": round(after.process_s - before.process_s, 2),
        "helpers_s": round(after.helpers_s - before.helpers_s, 2),
        "decoders_s": round(after.decoders_s - before.decoders_s, 2),
        "threads_s": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tunetrace.evaluation.live", description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--config", "-c", type=Path, required=True,
                        help="config whose catalog holds the tracks (their source files must be readable)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--unknown", type=Path, nargs="*", default=[],
                        help="music files NOT in the catalog, played between catalog tracks")
    parser.add_argument("--snr-db", type=float, default=None, help="add white noise at this SNR (dB)")
    parser.add_argument("--stations", type=int, default=1, help="run this many copies at once (CPU scaling)")
    parser.add_argument("--shared-audio", action="store_true",
                        help="count false plays of the catalog's duplicates (catalog overlaps) apart; "
                             "the search (~100 windows per track) runs before the stream, also without "
                             "this flag while tracker.shared_audio is on (the daemon's default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep-wav", type=Path, default=None, help="also save the rendered stream here")
    parser.add_argument("--show", action="store_true", help="print the true schedule and the plays")
    parser.add_argument("--realtime", action="store_true",
                        help="play the stream at real-time pace (memory over a long run; slow by design)")
    parser.add_argument("--rss-every-s", type=float, default=300.0,
                        help="sample the resident memory this often while the stream runs")
    parser.add_argument("--feed", choices=("http", "file"), default="http",
                        help="with --realtime: each station reads the stream from a local HTTP server "
                             "that sends it at its pace, like a radio stream (default), or from the "
                             "file paced by ffmpeg's -re (costs the decoder ~0.25%% of a core)")
    parser.add_argument("--speech", type=Path, default=None,
                        help="held-out recorded speech (`python -m tunetrace.evaluation.packages` unpacks "
                             "fillets-ng-data-nl and prints its folder), for --talk-over-db")
    parser.add_argument("--talk-over-db", type=float, default=None,
                        help="a presenter talks over each catalog track's intro and outro at this "
                             "music-to-speech ratio (dB); needs --speech")
    parser.add_argument("--talk-over-s", type=float, default=10.0,
                        help="seconds talked over at each end of a track (default 10)")
    parser.add_argument("--stream-codec", choices=("wav", *STREAM_CODECS), default="wav",
                        help="with --realtime and the http feed: send the stream as 8 kHz WAV (default) "
                             "or as a radio does, MP3 128k / AAC 64k at 44.1 kHz stereo, so the decoders "
                             "decode and resample")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("grpc", "pymilvus", "milvus_lite"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    if (args.talk_over_db is None) != (args.speech is None):
        print("--talk-over-db and --speech go together: the talk-over is made of held-out speech",
              file=sys.stderr)
        return 2
    config = load_config(args.config)
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible schedule, not a secret

    from tunetrace.pipeline import open_model

    # Opened once: Milvus Lite serves a database from the process that first opened it. As the
    # daemon opens it (a small catalog's searches answered from memory, ``store.resident``).
    model, store = open_model(config, resident=True)
    encoder = model.encoder
    catalog = [(t.track_id, Path(t.source_path), t.duration_s) for t in store.tracks()
               if Path(t.source_path).is_file() and t.duration_s > 30]
    if not catalog:
        print("the catalog has no tracks whose source files are readable here", file=sys.stderr)
        return 1
    duration_s = args.minutes * 60
    segments = make_schedule(catalog, list(args.unknown), duration_s, rng)
    shared, tracker_shared = catalog_shared_audio(
        store, encoder.info.hop_s, for_tracker=config.tracker.shared_audio, for_score=args.shared_audio,
    )
    sources = {p.name: p for _, p, _ in catalog} | {p.name: p for p in args.unknown}
    rate = encoder.info.sample_rate
    with tempfile.TemporaryDirectory(prefix="tunetrace-bench-") as folder:
        wav = Path(folder) / "stream.wav"
        talk = None
        if args.speech is not None and args.talk_over_db is not None:
            speech = list(scan_paths([args.speech], config.ingest.extensions))
            talk = TalkOver(SpeechPool(speech, rate), args.talk_over_db, args.talk_over_s)
        audio = render(segments, sources, rate, args.snr_db, rng, talk)
        wavfile.write(wav, rate, audio)
        if args.keep_wav:
            wavfile.write(args.keep_wav, rate, audio)
        stream_s = audio.size / rate
        encoded = None
        if args.realtime and args.feed == "http" and args.stream_codec != "wav":
            encoded = encode_stream(wav, args.stream_codec)
        rss_start = rss_mib()
        before = cpu_sample()
        rss_samples: list[float] = []
        after: list[CpuSample] = []
        radio: list[float] = []
        station_sinks, wall_s = asyncio.run(run_stream(
            config, wav, args.stations, model, realtime=args.realtime, rss_samples=rss_samples,
            cpu_at_end=after, feed=args.feed, server_cpu_s=radio, rss_every_s=args.rss_every_s,
            encoded=encoded, shared_audio=tracker_shared,
        ))
        cpu = cpu_breakdown(before, after[0])
        cpu["stream_server_s"] = round(sum(radio), 2)
        cpu_s = cpu["process_s"] - cpu["stream_server_s"] + cpu["helpers_s"]
        rss_end = rss_mib()
    station_plays = [plays_from_events(sink.events, sink.station.stream_s_at if sink.station else None)
                     for sink in station_sinks]
    plays = station_plays[0]
    if args.show:
        for segment in segments:
            print(f"truth {segment.start_s:7.1f}-{segment.end_s:7.1f} {segment.kind:8} {segment.label} "
                  f"track={segment.track_id} position={segment.position_s:.1f}")
        for play in plays:
            print(f"play  {play.start_s:7.1f}-{play.end_s:7.1f} track={play.track_id} "
                  f"position={play.position_start_s:.1f} decided={play.decided_s:.1f}")
    result = {
        "stream_s": round(stream_s, 1),
        "stations": args.stations,
        "snr_db": args.snr_db,
        "talk_over_db": args.talk_over_db,
        "talk_over_s": args.talk_over_s if args.talk_over_db is not None else None,
        "seed": args.seed,
        "catalog_tracks": len(catalog),
        "unknown_files": len(args.unknown),
        **score_stations(segments, station_plays, stream_s, shared or frozenset()),
        "shared_audio_pairs": None if shared is None else sorted(sorted(pair) for pair in shared),
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "cpu_core_share_per_station": round(cpu_s / (stream_s * args.stations), 4),
        "stations_per_core": round(stream_s * args.stations / cpu_s, 1) if cpu_s > 0 else None,
        "cpu_core_share_per_station_with_decoders": round(
            (cpu_s + cpu["decoders_s"]) / (stream_s * args.stations), 4),
        "cpu_breakdown_s": cpu,
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "realtime": args.realtime,
        "feed": args.feed if args.realtime else "file",
        "stream_codec": encoded.suffix.lstrip(".") if encoded is not None else "wav",
        "rss_every_s": args.rss_every_s,
        "rss_samples_mib": rss_samples,
        "plays": len(plays),
    }
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
