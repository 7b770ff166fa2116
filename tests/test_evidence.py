"""Evidence clips: the audio around a play start, encoded by the real ffmpeg, and their retention."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import synthetic_music
from tunetrace.audio.decode import decode_file
from tunetrace.config import EvidenceConfig
from tunetrace.publish.evidence import AudioHistory, EvidenceRecorder

RATE = 16000
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_audio_history_returns_exact_samples_across_the_wrap_and_forgets_the_oldest() -> None:
    history = AudioHistory(1000)
    stream = np.arange(2500, dtype=np.float32)
    for start in range(0, 2500, 300):
        history.write(start, stream[start : start + 300])
    assert history.end == 2500
    assert np.array_equal(history.read(1700, 2500), stream[1700:2500])
    assert np.array_equal(history.read(0, 2000), stream[1500:2000])  # older samples are gone
    history.write(3000, np.ones(100, np.float32))  # a 500-sample gap (a reconnect)
    assert np.array_equal(history.read(2400, 3100), np.r_[stream[2400:2500], np.zeros(500), np.ones(100)])


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_the_clip_around_a_play_start_is_the_stream_audio_compressed(tmp_path: Path) -> None:
    stream = synthetic_music(30.0, RATE, seed=5)
    config = EvidenceConfig(before_s=2.0, after_s=8.0)
    recorder = EvidenceRecorder("radio-one", config, tmp_path, RATE, wall_clock=lambda: NOW)

    async def scenario() -> None:
        block = RATE // 2
        for start in range(0, stream.size, block):
            recorder.audio(start, stream[start : start + block])
            if start == 14 * RATE:  # the play is confirmed a few seconds after its start at 10 s
                recorder.play_started("abc123", NOW, 10.0)
                await recorder.flush()
                assert recorder.written == [], "the clip waits until 18 s of the stream have arrived"
        await recorder.flush()

    asyncio.run(scenario())

    (clip,) = recorder.written
    assert clip == tmp_path / "radio-one" / "2026-03-01" / "20260301T120000Z-abc123.opus"
    assert clip.stat().st_size < 60_000  # compressed: 10 s of float32 PCM would be 640 kB
    audio = decode_file(clip, RATE)
    assert audio.size / RATE == pytest.approx(10.0, abs=0.05)
    assert ncc(audio, stream[8 * RATE : 18 * RATE]) > 0.8  # the stream from 8 s to 18 s
    assert abs(ncc(audio, stream[18 * RATE : 28 * RATE])) < 0.2  # (control: the next 10 s)


def test_clips_older_than_the_retention_are_deleted(tmp_path: Path) -> None:
    config = EvidenceConfig(retention_days=30)
    recorder = EvidenceRecorder("radio-one", config, tmp_path, RATE, wall_clock=lambda: NOW)
    old_day, recent_day = tmp_path / "radio-one" / "2026-01-01", tmp_path / "radio-one" / "2026-02-20"
    old_day.mkdir(parents=True)
    recent_day.mkdir(parents=True)
    old, recent = old_day / "a.opus", recent_day / "b.opus"
    for path, age in ((old, timedelta(days=31)), (recent, timedelta(days=9))):
        path.write_bytes(b"OggS")
        stamp = (NOW - age).timestamp()
        os.utime(path, (stamp, stamp))
    assert recorder.prune() == 1
    assert not old.exists() and not old_day.exists()
    assert recent.exists()
