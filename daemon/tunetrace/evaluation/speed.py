"""Speed benchmark: tracks aired fast or slow through the live voter and tracker.

``python -m tunetrace.evaluation.speed --tracks DIR --speeds 0.97,1.03`` plays ``--played-s``
seconds of each track (from ``--from-s``) resampled to each speed, as broadcast playout does, and
feeds its windows at the live hop through the same ``HorizonVoter`` and ``PlayTracker`` a station
runs, against an exact in-memory catalog of that track. It reports, per speed, how many plays each
airing became (one is right) and the error of the speed ratio ``play_ended`` carries.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunetrace.audio.decode import decode_file
from tunetrace.audio.resample import speed_change
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.catalog.scan import scan_paths
from tunetrace.config import Config, load_config
from tunetrace.encoders import create_encoder
from tunetrace.encoders.base import Encoder
from tunetrace.evaluation.live import emit_json
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
    info = encoder.info
    windows, starts = frame(audio, WindowSpec(info.sample_rate, info.window_s, info.hop_s))
    catalog = MemoryCatalog()
    track = Track(track_id=track_id, title="", artist="", album="", duration_s=audio.size / info.sample_rate,
                  source_path="", content_hash=f"speed-{track_id}", n_vectors=len(starts), ingested_at=0.0)
    catalog.add_track(track, encoder.embed(windows), starts / info.sample_rate)
    return catalog


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
    args = parser.parse_args(argv)
    config = load_config(args.config)
    encoder = create_encoder(config.encoder, config.data_dir)
    rate = encoder.info.sample_rate
    needed_s = args.from_s + args.played_s * 1.1
    speeds = [float(s) for s in args.speeds.split(",")]
    rows: dict[float, list[tuple[str, int, float | None]]] = {s: [] for s in speeds}
    files = list(scan_paths([args.tracks], config.ingest.extensions))
    used = 0
    for path in files:
        if used == args.count:
            break
        audio = decode_file(path, rate, max_seconds=needed_s)
        if audio.size < needed_s * rate:
            continue
        used += 1
        catalog = single_track_catalog(encoder, audio)
        for speed in speeds:
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
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
