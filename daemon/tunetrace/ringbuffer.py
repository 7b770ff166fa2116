"""A fixed-size float32 ring of recent audio, read as windows at the encoder's hop.

Capture writes and never blocks or allocates per block; recognition reads windows when it can.
Overflow policy: when recognition falls more than ``max_pending_windows`` behind (or the audio
it still needs was overwritten), the reader skips to the newest complete window and the skipped
windows are counted in ``dropped_windows``: now-playing stays current at the cost of evidence.
A gap in the stream clock (an outage) is filled with zeros so window times stay exact, and the
windows that overlap it are marked (``WindowBatch.outage``): zeros there are not silence on the
air but audio that never arrived, and the tracker must see the outage where it happened in stream
order, not only when the pipeline next notices the source's state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from tunetrace.audio.windows import WindowSpec


@dataclass(frozen=True)
class WindowBatch:
    windows: np.ndarray
    """(n, window_samples) float32, copies (safe to hand to another thread)."""
    start_samples: np.ndarray
    """(n,) int64 absolute stream index of each window's first sample."""
    outage: np.ndarray | None = None
    """(n,) bool: the window overlaps a gap the source never delivered (``None``: none does)."""

    def __len__(self) -> int:
        return int(self.start_samples.size)

    def outage_mask(self) -> np.ndarray:
        """``outage`` as an array whatever the batch says (all false when it says nothing)."""
        return self.outage if self.outage is not None else np.zeros(len(self), bool)


class RingBuffer:
    def __init__(self, capacity_samples: int, spec: WindowSpec, max_pending_windows: int) -> None:
        if capacity_samples < spec.window_samples + spec.hop_samples:
            raise ValueError("the ring must hold at least one window and one hop")
        self._data = np.zeros(capacity_samples, np.float32)
        self._capacity = capacity_samples
        self._window = spec.window_samples
        self._hop = spec.hop_samples
        self._max_pending = max_pending_windows
        self._write_index: int | None = None
        """Absolute index one past the newest sample written (``None`` before the first block)."""
        self._next_window: int = 0
        self._gaps: deque[tuple[int, int]] = deque()
        """Absolute ``[start, end)`` sample ranges filled with zeros for an outage, oldest first."""
        self.dropped_windows = 0

    @property
    def write_index(self) -> int:
        return self._write_index or 0

    def write(self, start_sample: int, samples: np.ndarray) -> None:
        """Store a block that starts at ``start_sample``; a forward gap becomes zeros."""
        if self._write_index is None:
            self._write_index = start_sample
            self._next_window = start_sample
        if start_sample < self._write_index:  # overlap: keep what we have, take only the new part
            samples = samples[self._write_index - start_sample :]
            start_sample = self._write_index
        gap = start_sample - self._write_index
        if gap > 0:
            self._gaps.append((self._write_index, start_sample))
            self._put(self._write_index, np.zeros(min(gap, self._capacity), np.float32), gap)
        self._put(start_sample, samples, samples.size)

    def _put(self, start: int, samples: np.ndarray, advance: int) -> None:
        """Write ``samples`` ending at ``start + advance`` (only the newest ``capacity`` fit)."""
        end = start + advance
        samples = samples[-self._capacity :]
        first = end - samples.size
        offset = first % self._capacity
        head = min(samples.size, self._capacity - offset)
        self._data[offset : offset + head] = samples[:head]
        self._data[: samples.size - head] = samples[head:]
        self._write_index = end

    def pending_windows(self) -> int:
        if self._write_index is None:
            return 0
        available = self._write_index - self._next_window - self._window
        return 0 if available < 0 else available // self._hop + 1

    def read(self, max_windows: int) -> WindowBatch:
        """Up to ``max_windows`` of the oldest unread windows (after skipping if too far behind)."""
        pending = self.pending_windows()
        oldest_kept = self.write_index - self._capacity
        if pending > self._max_pending or (pending and self._next_window < oldest_kept):
            self.dropped_windows += pending - 1
            self._next_window += (pending - 1) * self._hop
            pending = 1
        count = min(pending, max_windows)
        starts = self._next_window + np.arange(count, dtype=np.int64) * self._hop
        windows = np.empty((count, self._window), np.float32)
        for row, start in enumerate(starts):
            offset = int(start) % self._capacity
            head = min(self._window, self._capacity - offset)
            windows[row, :head] = self._data[offset : offset + head]
            windows[row, head:] = self._data[: self._window - head]
        self._next_window += count * self._hop
        return WindowBatch(windows, starts, self._outage(starts))

    def _outage(self, starts: np.ndarray) -> np.ndarray | None:
        """Which of these windows overlap a gap; then forgets the gaps that no window still to be
        read can overlap (they all start at or after the next unread window)."""
        mask = np.zeros(starts.size, bool)
        for gap_start, gap_end in self._gaps:
            mask |= (starts < gap_end) & (starts + self._window > gap_start)
        while self._gaps and self._gaps[0][1] <= self._next_window:
            self._gaps.popleft()
        return mask if mask.any() else None

    def recent(self, n_samples: int) -> np.ndarray:
        """The newest ``n_samples`` (at most the capacity), oldest first."""
        n = min(n_samples, self._capacity, self.write_index)
        out = np.empty(n, np.float32)
        first = (self.write_index - n) % self._capacity
        head = min(n, self._capacity - first)
        out[:head] = self._data[first : first + head]
        out[head:] = self._data[: n - head]
        return out
