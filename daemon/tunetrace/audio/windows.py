"""Cut audio into the fixed-length, overlapping windows that encoders embed.

Offsets are kept in samples (exact integers) and converted to seconds only at the edges, so
catalog and query offsets stay comparable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class WindowSpec:
    sample_rate: int
    window_s: float
    hop_s: float

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return max(1, round(self.hop_s * self.sample_rate))

    def with_hop(self, hop_s: float) -> WindowSpec:
        return WindowSpec(self.sample_rate, self.window_s, hop_s)


def frame(audio: np.ndarray, spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """All full windows of ``audio`` and their start offsets in samples.

    A clip shorter than one window is zero-padded to a single window, so a short query still gets
    an (honest, low-confidence) answer instead of an error.
    """
    size, hop = spec.window_samples, spec.hop_samples
    if audio.size < size:
        if audio.size == 0:
            return np.zeros((0, size), np.float32), np.zeros(0, np.int64)
        padded = np.zeros(size, np.float32)
        padded[: audio.size] = audio
        return padded[None, :], np.zeros(1, np.int64)
    view = sliding_window_view(audio, size)[::hop]
    starts = np.arange(view.shape[0], dtype=np.int64) * hop
    return np.ascontiguousarray(view, dtype=np.float32), starts


def frame_stream(blocks: Iterable[np.ndarray], spec: WindowSpec) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frame a stream of PCM blocks without holding it all: yields (windows, start offsets)."""
    size, hop = spec.window_samples, spec.hop_samples
    pending = np.zeros(0, np.float32)
    consumed = 0  # absolute sample index of pending[0]
    for block in blocks:
        pending = np.concatenate([pending, block.astype(np.float32, copy=False)])
        if pending.size < size:
            continue
        count = (pending.size - size) // hop + 1
        windows = sliding_window_view(pending, size)[: count * hop : hop]
        yield np.ascontiguousarray(windows), consumed + np.arange(count, dtype=np.int64) * hop
        pending = pending[count * hop :]
        consumed += count * hop
    if consumed == 0 and 0 < pending.size < size:
        padded = np.zeros(size, np.float32)
        padded[: pending.size] = pending
        yield padded[None, :], np.zeros(1, np.int64)
