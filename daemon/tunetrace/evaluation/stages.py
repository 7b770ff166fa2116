"""CPU per live window, stage by stage: what one station's recognition costs apart from its pipeline.

``python -m tunetrace.evaluation.stages --config CFG --per-call 2 32`` plays one catalog track
through a ``HorizonVoter`` and a ``PlayTracker`` the way a station on air does (live windows at
the configured hop, handed over ``--per-call`` windows at a time: 2 is one station's search
interval, 32 is what the shared batcher gathers from many stations) and reports the CPU per
window of each stage: embedding (with the silence check), the search request in this process (the
client), the search in Milvus Lite's server process, voting over the horizon (per window, voting
happens once per ``decision_interval_s``) and the tracker. The live benchmark
(``tunetrace.evaluation.live``) measures the whole; this says where it goes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunetrace.audio.decode import decode_file
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.config import load_config
from tunetrace.evaluation.live import emit_json, helper_cpu_s
from tunetrace.ringbuffer import WindowBatch
from tunetrace.store.base import Hit
from tunetrace.tracker import PlayTracker, TrackerParams
from tunetrace.voting import HorizonVoter, horizon_params

STAGES = ("embed", "search_client", "search_server", "vote", "tracker")


@dataclass
class StageTimes:
    """CPU seconds per stage, summed over every call."""

    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    windows: int = 0
    decisions: int = 0

    def per_window_ms(self) -> dict[str, float]:
        return {k: round(1000 * v / max(1, self.windows), 3) for k, v in self.cpu_s.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tunetrace.evaluation.stages", description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--config", "-c", type=Path, required=True, help="config whose catalog to search")
    parser.add_argument("--per-call", type=int, nargs="+", default=[2, 32],
                        help="windows handed over per call (2: one station alone; 32: batched stations)")
    parser.add_argument("--seconds", type=float, default=120.0, help="audio of the track to play")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def measure(
    voter: HorizonVoter, tracker: PlayTracker, windows: np.ndarray, starts: np.ndarray, per_call: int,
    embed: Callable[[np.ndarray], np.ndarray], search: Callable[[np.ndarray, int], list[list[Hit]]],
) -> StageTimes:
    """Feed ``windows`` ``per_call`` at a time through the encoder's ``embed``, the catalog's
    ``search``, the voter and the tracker."""
    times = StageTimes()
    server_before = helper_cpu_s()
    for first in range(0, len(starts) - per_call + 1, per_call):
        batch = WindowBatch(windows[first : first + per_call].copy(), starts[first : first + per_call])
        t0 = time.process_time()
        audible = voter.audible(batch)
        vectors = embed(batch.windows[audible])
        t1 = time.process_time()
        found = search(vectors, voter.top_k) if audible.size else []
        t2 = time.process_time()
        observations = voter.observe(batch, audible, found)
        t3 = time.process_time()
        for observation in observations:
            tracker.observe(observation)
        t4 = time.process_time()
        for stage, spent in zip(("embed", "search_client", "vote", "tracker"),
                                (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times.cpu_s[stage] += spent
        times.windows += per_call
        times.decisions += len(observations)
    times.cpu_s["search_server"] = helper_cpu_s() - server_before
    return times


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from tunetrace.pipeline import open_model

    config = load_config(args.config)
    model, store = open_model(config)
    try:
        tracks = [t for t in store.tracks()
                  if Path(t.source_path).is_file() and t.duration_s > args.seconds / 2]
        if not tracks:
            print("the catalog has no track whose source file is readable here", file=sys.stderr)
            return 1
        info = model.encoder.info
        audio = decode_file(Path(tracks[0].source_path), info.sample_rate, max_seconds=args.seconds)
        spec = WindowSpec(info.sample_rate, info.window_s, config.tracker.window_hop_s)
        windows, starts = frame(audio, spec)
        results = {}
        for per_call in args.per_call:
            voter = HorizonVoter(model.encoder, model.catalog, model.shape, horizon_params(
                model.encoder, config.matcher, config.tracker, -60.0))
            tracker = PlayTracker(TrackerParams.from_config(config.tracker))
            times = measure(voter, tracker, windows, starts.astype(np.int64), per_call,
                            model.encoder.embed, model.catalog.search)
            per_window = times.per_window_ms()
            results[str(per_call)] = {
                "windows": times.windows, "decisions": times.decisions,
                "cpu_ms_per_window": per_window, "total_ms_per_window": round(sum(per_window.values()), 3),
                "core_share_per_station": round(
                    sum(per_window.values()) / 1000 / config.tracker.window_hop_s, 4),
            }
        emit_json({"track": tracks[0].title, "window_hop_s": config.tracker.window_hop_s,
                   "decision_interval_s": config.tracker.decision_interval_s, "per_call": results}, args.json)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
