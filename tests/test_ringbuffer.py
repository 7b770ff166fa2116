"""The ring buffer: exact windows at the hop, gaps as zeros, and skip-to-newest when behind."""

from __future__ import annotations

import numpy as np
import pytest

from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.ringbuffer import RingBuffer

RATE = 100
SPEC = WindowSpec(RATE, window_s=1.0, hop_s=0.25)  # 100-sample windows every 25 samples


def ramp(start: int, n: int) -> np.ndarray:
    """Samples whose value is their absolute index: any misplaced sample is visible."""
    return np.arange(start, start + n, dtype=np.float32)


def test_windows_match_framing_the_whole_stream_however_it_is_split_into_blocks() -> None:
    ring = RingBuffer(1000, SPEC, max_pending_windows=1000)
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(2000).astype(np.float32)
    windows, starts = [], []
    position = 0
    while position < audio.size:
        n = int(rng.integers(1, 90))
        ring.write(position, audio[position : position + n])
        position += n
        batch = ring.read(max_windows=3)
        windows.append(batch.windows)
        starts.append(batch.start_samples)
    while len(batch := ring.read(max_windows=3)):
        windows.append(batch.windows)
        starts.append(batch.start_samples)

    expected_windows, expected_starts = frame(audio, SPEC)
    np.testing.assert_array_equal(np.concatenate(starts), expected_starts)
    np.testing.assert_array_equal(np.concatenate(windows), expected_windows)
    assert ring.dropped_windows == 0


def test_windows_are_stamped_with_absolute_sample_indices() -> None:
    ring = RingBuffer(500, SPEC, max_pending_windows=100)
    ring.write(10_000, ramp(10_000, 150))
    batch = ring.read(10)
    assert batch.start_samples.tolist() == [10_000, 10_025, 10_050]
    np.testing.assert_array_equal(batch.windows[1], ramp(10_025, 100))


def test_falling_behind_skips_to_the_newest_window_and_counts_the_drop() -> None:
    ring = RingBuffer(10_000, SPEC, max_pending_windows=8)
    ring.write(0, ramp(0, 1000))  # 37 windows pending, far more than 8

    batch = ring.read(max_windows=64)

    assert batch.start_samples.tolist() == [900]
    np.testing.assert_array_equal(batch.windows[0], ramp(900, 100))
    assert ring.dropped_windows == 36
    assert ring.pending_windows() == 0


def test_overwritten_audio_is_never_returned() -> None:
    ring = RingBuffer(200, SPEC, max_pending_windows=1000)  # holds 2 s
    ring.write(0, ramp(0, 600))  # the reader's next window (at 0) was overwritten long ago
    batch = ring.read(max_windows=100)
    assert batch.start_samples.tolist() == [500]
    np.testing.assert_array_equal(batch.windows[0], ramp(500, 100))


def test_a_gap_in_the_stream_clock_becomes_silence() -> None:
    ring = RingBuffer(1000, SPEC, max_pending_windows=1000)
    ring.write(0, np.ones(100, np.float32))
    ring.write(300, np.ones(100, np.float32))  # an outage of 200 samples
    batch = ring.read(max_windows=100)
    by_start = dict(zip(batch.start_samples.tolist(), batch.windows, strict=True))
    np.testing.assert_array_equal(by_start[100], np.zeros(100, np.float32))
    assert by_start[50][:50].tolist() == [1.0] * 50 and not by_start[50][50:].any()
    np.testing.assert_array_equal(by_start[300], np.ones(100, np.float32))


def test_overlapping_blocks_keep_the_first_copy() -> None:
    ring = RingBuffer(1000, SPEC, max_pending_windows=1000)
    ring.write(0, ramp(0, 100))
    ring.write(50, np.full(100, -1, np.float32))  # 50 samples overlap what is stored
    recent = ring.recent(150)
    np.testing.assert_array_equal(recent[:100], ramp(0, 100))
    assert (recent[100:] == -1).all()


def test_a_block_larger_than_the_ring_keeps_only_its_newest_samples() -> None:
    ring = RingBuffer(300, SPEC, max_pending_windows=1000)
    ring.write(0, ramp(0, 1000))
    np.testing.assert_array_equal(ring.recent(300), ramp(700, 300))


def test_the_ring_must_hold_a_window_and_a_hop() -> None:
    with pytest.raises(ValueError, match="at least one window"):
        RingBuffer(110, SPEC, max_pending_windows=10)


def test_windows_over_a_gap_are_marked_as_outage_and_the_gap_is_forgotten_once_read() -> None:
    ring = RingBuffer(1000, SPEC, max_pending_windows=1000)
    ring.write(0, np.ones(200, np.float32))
    ring.write(400, np.ones(300, np.float32))  # samples 200-399 never arrived
    batch = ring.read(max_windows=100)
    outage = dict(zip(batch.start_samples.tolist(), batch.outage_mask().tolist(), strict=True))
    assert not outage[100], "ends where the gap begins"
    assert outage[125] and outage[300] and outage[375], "overlap the gap"
    assert not outage[400], "starts where the audio resumes"
    ring.write(700, np.ones(200, np.float32))
    later = ring.read(max_windows=100)
    assert later.outage is None, "a gap already read past marks nothing more"


def test_a_stream_without_gaps_marks_no_outage() -> None:
    ring = RingBuffer(1000, SPEC, max_pending_windows=1000)
    for start in range(0, 600, 50):
        ring.write(start, np.ones(50, np.float32))
    batch = ring.read(max_windows=100)
    assert len(batch) and batch.outage is None and not batch.outage_mask().any()
