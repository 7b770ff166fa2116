"""Speed benchmark: tracks aired fast or slow through the live voter and tracker.

``python -m tunetrace.evaluation.speed --tracks DIR --speeds 0.97,1.03`` plays ``--played-s``
seconds of each track (from ``--from-s``) resampled to each speed, as broadcast playout does, and
feeds its windows at the live hop through the same ``HorizonVoter`` and ``PlayTracker`` a station
runs, against an exact in-memory catalog of that track. It reports, per speed, how many plays each
airing became (one is right) and the error of the speed ratio ``play_ended`` carries.

One-shot (``--oneshot-lengths``): snippets of the same tracks at the same speeds, identified by the
``Recognizer`` against an exact in-memory catalog of all of them, with the speed each answer
measured from its match's drift (``voting.speed``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunetrace.audio.decode import decode_file
from tunetrace.audio.resample import speed_change
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.catalog.scan import scan_paths
from tunetrace.config import Config, load_config
from tunetrace.encoders import create_encoder
from tunetrace.encoders.base import Encoder
from tunetrace.evaluation.live import emit_json
from tunetrace.identify import Identification, Recognizer
from tunetrace.ringbuffer import WindowBatch
from tunetrace.store import catalog_shape
from tunetrace.store.base import Track
from tunetrace.store.memory import MemoryCatalog
from tunetrace.tracker import PlayEnded, PlayTracker, TrackerEvent, TrackerParams
from tunetrace.voting.horizon import HorizonVoter, horizon_params

BATCH_WINDOWS = 8
"""Windows per voter call, about what a station's ring hands over each search interval."""


@dataclass(frozen=True)
class Airing:
    """``played_s`` of ``audio`` from ``from_s``, aired at ``speed``."""

    from_s: float
    played_s: float
    speed: float


def single_track_catalog(encoder: Encoder, audio: np.ndarray, track_id: int = 1) -> MemoryCatalog:
    """An exact catalog of one track, embedded at the encoder's own hop."""
    catalog = MemoryCatalog()
    add_exactly(catalog, encoder, audio, track_id)
    return catalog


def add_exactly(catalog: MemoryCatalog, encoder: Encoder, audio: np.ndarray, track_id: int) -> None:
    """Add ``audio`` to ``catalog`` as track ``track_id``, embedded at the encoder's own hop."""
    info = encoder.info
    windows, starts = frame(audio, WindowSpec(info.sample_rate, info.window_s, info.hop_s))
    track = Track(track_id=track_id, title="", artist="", album="", duration_s=audio.size / info.sample_rate,
                  source_path="", content_hash=f"speed-{track_id}", n_vectors=len(starts), ingested_at=0.0)
    catalog.add_track(track, encoder.embed(windows), starts / info.sample_rate)


def air(config: Config, encoder: Encoder, catalog: MemoryCatalog, audio: np.ndarray,
        airing: Airing) -> list[TrackerEvent]:
    """The tracker's events for the airing, closed at its end (its last play ends ``shutdown``)."""
    info = encoder.info
    rate = info.sample_rate
    voter = HorizonVoter(encoder, catalog, catalog_shape(catalog.tracks()), horizon_params(
        encoder, config.matcher, config.tracker, silence_threshold_dbfs=-60.0,
    ))
    tracker = PlayTracker(TrackerParams.from_config(config.tracker))
    end_s = airing.from_s + airing.played_s * airing.speed
    played = audio[round(airing.from_s * rate) : round(end_s * rate)]
    on_air = speed_change(played, airing.speed)
    windows, starts = frame(on_air, WindowSpec(rate, info.window_s, config.tracker.window_hop_s))
    events: list[TrackerEvent] = []
    for first in range(0, len(starts), BATCH_WINDOWS):
        batch = WindowBatch(windows[first : first + BATCH_WINDOWS], starts[first : first + BATCH_WINDOWS])
        for observation in voter.process(batch):
            events.extend(tracker.observe(observation))
    events.extend(tracker.close(on_air.size / rate))
    return events


@dataclass(frozen=True)
class Snippet:
    """A one-shot query: ``length_s`` of a track from ``from_s``, as played at ``speed``."""

    track_id: int
    from_s: float
    length_s: float
    speed: float


def identify_speed(recognizer: Recognizer, audio: np.ndarray, rate: int, snippet: Snippet) -> Identification:
    """``recognizer``'s answer for the snippet (the track's audio, played at the snippet's speed)."""
    end_s = snippet.from_s + snippet.length_s * snippet.speed
    played = audio[round(snippet.from_s * rate) : round(end_s * rate)]
    return recognizer.identify(speed_change(played, snippet.speed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunetrace.evaluation.speed", description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--config", "-c", type=Path, default=None, help="config (encoder, matcher, tracker)")
    parser.add_argument("--tracks", type=Path, required=True, help="folder of music files")
    parser.add_argument("--count", type=int, default=10, help="tracks to use (the first, sorted)")
    parser.add_argument("--speeds", default="0.97,1.03,0.95,1.05")
    parser.add_argument("--from-s", type=float, default=20.0)
    parser.add_argument("--played-s", type=float, default=100.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--oneshot-lengths", default="5,10",
                        help="also identify snippets of these lengths (s) at each speed, one-shot, "
                             "against a catalog of all the tracks used ('' for none)")
    parser.add_argument("--oneshot-per-track", type=int, default=3,
                        help="snippets per track, speed and length")
    parser.add_argument("--oneshot-only", action="store_true", help="skip the live airings")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    encoder = create_encoder(config.encoder, config.data_dir)
    rate = encoder.info.sample_rate
    needed_s = args.from_s + args.played_s * 1.1
    speeds = [float(s) for s in args.speeds.split(",")]
    rows: dict[float, list[tuple[str, int, float | None]]] = {s: [] for s in speeds}
    files = list(scan_paths([args.tracks], config.ingest.extensions))
    used = 0
    tracks: list[np.ndarray] = []
    for path in files:
        if used == args.count:
            break
        audio = decode_file(path, rate, max_seconds=needed_s)
        if audio.size < needed_s * rate:
            continue
        used += 1
        tracks.append(audio)
        catalog = single_track_catalog(encoder, audio)
        for speed in [] if args.oneshot_only else speeds:
            airing = Airing(args.from_s, args.played_s, speed)
            ended = [e for e in air(config, encoder, catalog, audio, airing) if isinstance(e, PlayEnded)]
            measured = ended[0].play.speed_ratio if len(ended) == 1 else None
            rows[speed].append((path.name, len(ended), measured))
    result = {"tracks": used, "played_s": args.played_s, "speeds": {}}
    for speed, cases in rows.items():
        errors = [abs(m - speed) * 100 for _, _, m in cases if m is not None]
        result["speeds"][str(speed)] = {
            "airings": len(cases),
            "one_play": sum(n == 1 for _, n, _ in cases),
            "error_pct_median": round(statistics.median(errors), 3) if errors else None,
            "error_pct_max": round(max(errors), 3) if errors else None,
            "cases": [{"track": t, "plays": n, "speed_ratio": m} for t, n, m in cases],
        }
    lengths = [float(x) for x in args.oneshot_lengths.split(",") if x.strip()]
    if lengths:
        result["oneshot"] = oneshot_report(config, encoder, tracks, speeds, lengths, args)
    emit_json(result, args.json)
    return 0


def oneshot_report(
    config: Config, encoder: Encoder, tracks: list[np.ndarray], speeds: list[float], lengths: list[float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Per speed and snippet length: right answers, speeds measured, and their error (%)."""
    catalog = MemoryCatalog()
    for track_id, audio in enumerate(tracks, start=1):
        add_exactly(catalog, encoder, audio, track_id)
    recognizer = Recognizer(encoder, catalog, config.matcher)
    rate = encoder.info.sample_rate
    report: dict[str, Any] = {}
    for speed in speeds:
        for length in lengths:
            snippets = [
                Snippet(track_id, args.from_s + 25.0 * k, length, speed)
                for track_id in range(1, len(tracks) + 1) for k in range(args.oneshot_per_track)
            ]
            answers = [identify_speed(recognizer, tracks[s.track_id - 1], rate, s) for s in snippets]
            truth = [s.track_id for s in snippets]
            right = [a for a, t in zip(answers, truth, strict=True) if a.track and a.track.track_id == t]
            errors = [abs(a.speed_ratio - speed) * 100 for a in right if a.speed_measured]
            report[f"{speed} {length:g}s"] = {
                "snippets": len(answers),
                "right_track": len(right),
                "speed_measured": len(errors),
                "error_pct_median": round(statistics.median(errors), 3) if errors else None,
                "error_pct_p95": round(float(np.percentile(errors, 95)), 3) if errors else None,
                "error_pct_max": round(max(errors), 3) if errors else None,
                "within_0_5_pct": sum(e <= 0.5 for e in errors),
            }
    return report


if __name__ == "__main__":
    sys.exit(main())
