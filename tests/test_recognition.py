"""The live pipeline on a file read as fast as possible: same stations, windows, voting and tracker
as the daemon, on the stream clock, so the plays of a known schedule are checked exactly and fast."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import Clip, write_wav
from tests.fixtures.milvus import BuiltCatalog, private_catalog_copy
from tunetrace.audio.decode import decode_file
from tunetrace.evaluation.live import EPOCH, plays_from_events, run_stream
from tunetrace.pipeline import StreamClock
from tunetrace.sources.base import AudioBlock

RATE = 8000


def test_a_schedule_of_excerpts_yields_one_play_each_with_back_dated_times_and_positions(
    clip_catalog: BuiltCatalog, real_clips: list[Clip], holdout_clips: list[Clip], tmp_path: Path,
) -> None:
    first = decode_file(real_clips[0].path, RATE)
    second = decode_file(real_clips[1].path, RATE)
    unknown = decode_file(holdout_clips[0].path, RATE)
    silence = np.zeros(2 * RATE, np.float32)
    # 0-2 silence | 2-22 clip 0 from 10 s | 22-32 unknown | 32-34 silence | 34-56 clip 1 from 3 s
    # directly followed by 56-70 clip 0 from 20 s | 70-82 silence
    stream = np.concatenate([
        silence, first[10 * RATE : 30 * RATE], unknown[: 10 * RATE], silence,
        second[3 * RATE : 25 * RATE], first[20 * RATE : 34 * RATE], np.zeros(12 * RATE, np.float32),
    ])
    wav = write_wav(tmp_path / "stream.wav", stream, RATE)

    private = private_catalog_copy(clip_catalog, tmp_path / "data")
    config = clip_catalog.config.model_copy(update={"data_dir": private})
    sinks, _ = asyncio.run(run_stream(config, wav))

    ids = [clip_catalog.tracks[c.path].track_id for c in real_clips]
    plays = plays_from_events(sinks[0].events)
    assert [p.track_id for p in plays] == [ids[0], ids[1], ids[0]]
    expected = [(2.0, 22.0, 10.0), (34.0, 56.0, 3.0), (56.0, 70.0, 20.0)]
    for play, (start_s, end_s, position_s) in zip(plays, expected, strict=True):
        assert play.start_s == pytest.approx(start_s, abs=1.0)
        # Ends within 2 s: in this 3-clip catalog (240 vectors) every window's top 10 neighbours
        # are 4% of the catalog, so chance agreement at the play's alignment can outlast the track
        # by a second or two (on the 29-track benchmark catalog ends are within ~0.5 s).
        assert play.end_s == pytest.approx(end_s, abs=2.0)
        assert play.position_start_s == pytest.approx(position_s + (play.start_s - start_s), abs=0.6)
        assert play.decided_s - start_s < 6.0, "now-playing latency on the stream clock"
    kinds = [e.kind for _, e in sinks[0].events]
    assert kinds == ["play_started", "play_ended"] * 3
    assert all(e.play.started_at >= EPOCH for _, e in sinks[0].events)


def test_the_stream_clock_maps_a_play_time_back_onto_the_stream() -> None:
    """Play times are wall-clock; the benchmark scores them on the stream through this inverse."""
    clock = StreamClock(RATE)
    assert clock.stream_s_at(EPOCH) is None, "no stream clock before the first block"
    arrived = EPOCH + timedelta(seconds=0.37)  # the source's start-up delay
    block = AudioBlock(start_sample=5 * RATE, samples=np.zeros(RATE // 10, np.float32), captured_at=arrived)
    clock.update(block)
    for stream_s in (0.0, 5.0, 123.45):
        wall = clock.wall(stream_s)
        assert wall == arrived + timedelta(seconds=stream_s - 5.0)
        assert clock.stream_s_at(wall) == pytest.approx(stream_s, abs=1e-6)
