"""Framing: streaming gives exactly the windows and sample offsets of framing the whole array."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tunetrace.audio.windows import WindowSpec, frame, frame_stream

SPEC = WindowSpec(sample_rate=8000, window_s=1.0, hop_s=0.5)


def blocks_of(audio: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    """``audio`` cut into consecutive blocks of the given sizes (the last one takes the rest)."""
    start = 0
    for size in sizes:
        yield audio[start : start + size]
        start += size
    if start < audio.size:
        yield audio[start:]


def stream_all(audio: np.ndarray, sizes: list[int], spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    parts = list(frame_stream(blocks_of(audio, sizes), spec))
    if not parts:
        return np.zeros((0, spec.window_samples), np.float32), np.zeros(0, np.int64)
    return np.concatenate([w for w, _ in parts]), np.concatenate([s for _, s in parts])


def test_spec_converts_seconds_to_whole_samples() -> None:
    assert SPEC.window_samples == 8000
    assert SPEC.hop_samples == 4000
    assert SPEC.with_hop(0.05).hop_samples == 400
    assert WindowSpec(16000, 0.96, 0.0).hop_samples == 1  # never a zero hop


def test_frame_cuts_every_full_window_at_exact_offsets() -> None:
    audio = np.arange(8000 * 3 + 1234, dtype=np.float32)
    windows, starts = frame(audio, SPEC)
    assert windows.shape == (5, 8000)  # a window at 20000 would end past the last sample
    assert windows.dtype == np.float32
    assert starts.tolist() == [0, 4000, 8000, 12000, 16000]
    for window, start in zip(windows, starts, strict=True):
        assert np.array_equal(window, audio[start : start + 8000])


@pytest.mark.parametrize("seed", range(8))
def test_streaming_in_random_blocks_equals_framing_the_whole(seed: int) -> None:
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal(int(rng.integers(8000, 8000 * 20))).astype(np.float32)
    sizes = rng.integers(1, 12000, size=200).tolist()
    spec = SPEC.with_hop(float(rng.choice([0.05, 0.1, 0.37, 0.5, 1.0])))

    whole_windows, whole_starts = frame(audio, spec)
    streamed_windows, streamed_starts = stream_all(audio, sizes, spec)

    assert np.array_equal(streamed_starts, whole_starts)
    assert np.array_equal(streamed_windows, whole_windows)


def test_blocks_smaller_than_a_hop_still_give_every_window() -> None:
    audio = np.arange(8000 * 4, dtype=np.float32)
    windows, starts = stream_all(audio, [7] * (audio.size // 7), SPEC)
    expected_windows, expected_starts = frame(audio, SPEC)
    assert np.array_equal(starts, expected_starts)
    assert np.array_equal(windows, expected_windows)


def test_a_clip_shorter_than_one_window_is_padded_to_one_window() -> None:
    audio = np.ones(3000, np.float32)
    for windows, starts in (frame(audio, SPEC), stream_all(audio, [1000, 1000], SPEC)):
        assert windows.shape == (1, 8000)
        assert starts.tolist() == [0]
        assert np.all(windows[0, :3000] == 1.0)
        assert np.all(windows[0, 3000:] == 0.0)


def test_no_audio_gives_no_windows() -> None:
    windows, starts = frame(np.zeros(0, np.float32), SPEC)
    assert windows.shape == (0, 8000)
    assert starts.size == 0
    assert list(frame_stream(iter([]), SPEC)) == []
    assert list(frame_stream(iter([np.zeros(0, np.float32)]), SPEC)) == []


def test_streamed_windows_do_not_alias_later_blocks() -> None:
    """Windows yielded early must keep their values after more audio arrives."""
    audio = np.arange(8000 * 3, dtype=np.float32)
    stream = frame_stream(blocks_of(audio, [8000, 8000, 8000]), SPEC)
    first_windows, _ = next(stream)
    snapshot = first_windows.copy()
    for _ in stream:
        pass
    assert np.array_equal(first_windows, snapshot)


def test_float64_blocks_are_framed_as_float32() -> None:
    windows, _ = stream_all(np.linspace(-1, 1, 9000), [4500, 4500], SPEC)
    assert windows.dtype == np.float32
