"""Where an ingest's CPU goes, stage by stage (docs/scaling.md section 4).

    python -m tunetrace.evaluation.ingest_cost -c CONFIG PATH...

Runs the steps of ``catalog.ingest`` one after another in this process, without writing to any
catalog (so neither the insert nor the worker hand-offs are in it), and charges the CPU time of
this process and of its ffmpeg/ffprobe children (``getrusage``) to each step. CPU time, unlike
wall time, means something on a shared machine: the sum says how many seconds of audio per second
the cores could ingest at most.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tunetrace.audio.decode import audio_stream_sha256, iter_pcm_blocks, probe_tags
from tunetrace.audio.features import log_mel
from tunetrace.audio.windows import frame_stream
from tunetrace.catalog.scan import scan_paths
from tunetrace.catalog.tags import read_tags
from tunetrace.config import load_config
from tunetrace.encoders import create_encoder
from tunetrace.encoders.fingerprint import FingerprintEncoder

STAGES = ("decode", "hash", "probe", "tags", "framing", "features", "model")


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class StageClock:
    """CPU seconds charged to each named stage."""

    def __init__(self) -> None:
        self.cpu_s = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = _cpu_s()
        try:
            yield
        finally:
            self.cpu_s[name] += _cpu_s() - started


def profile(
    files: list[Path], encoder: FingerprintEncoder, batch_size: int,
) -> tuple[StageClock, float, int]:
    """(CPU per stage, seconds of audio, windows) for ingesting ``files`` (nothing is stored)."""
    clock = StageClock()
    info = encoder.info
    audio_s, windows = 0.0, 0
    for path in files:
        with clock.stage("hash"):
            audio_stream_sha256(path)
        with clock.stage("probe"):
            probe_tags(path)
        with clock.stage("tags"):
            read_tags(path)
        with clock.stage("decode"):
            blocks = list(iter_pcm_blocks(path, info.sample_rate))
        audio_s += sum(b.size for b in blocks) / info.sample_rate
        with clock.stage("framing"):
            framed = [np.ascontiguousarray(w) for w, _ in frame_stream(blocks, info.window_spec)]
        for batch in framed:
            windows += batch.shape[0]
            for start in range(0, batch.shape[0], batch_size):
                part = batch[start : start + batch_size]
                with clock.stage("features"):
                    log_mel(part, encoder.mel_spec)
                with clock.stage("model"):  # the front end again, then the model: subtracted below
                    encoder.embed(part)
    clock.cpu_s["model"] = max(0.0, clock.cpu_s["model"] - clock.cpu_s["features"])
    return clock, audio_s, windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    encoder = create_encoder(config.encoder, config.data_dir)
    if not isinstance(encoder, FingerprintEncoder):
        parser.error("the stage profile splits the fingerprint encoder (encoder.name: fingerprint)")
    files = list(scan_paths(args.paths, config.ingest.extensions))
    clock, audio_s, windows = profile(files, encoder, config.encoder.batch_size)
    total = sum(clock.cpu_s.values())
    batch = config.encoder.batch_size
    print(f"{len(files)} files, {audio_s:.0f} s of audio, {windows} windows, batch {batch}")
    print("| stage | CPU s | ms per audio s | share |\n|---|---|---|---|")
    for stage, spent in clock.cpu_s.items():
        print(f"| {stage} | {spent:.1f} | {1000 * spent / audio_s:.2f} | {100 * spent / total:.0f} % |")
    print(f"| total | {total:.1f} | {1000 * total / audio_s:.2f} | |")
    model_s = clock.cpu_s["features"] + clock.cpu_s["model"]
    print(f"embedding: {windows / model_s:.0f} windows per CPU s; at most {audio_s / total:.0f} s of audio "
          "per CPU s for the whole ingest (times the cores, if nothing else runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
