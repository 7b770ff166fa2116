"""Log-mel spectrogram front end in NumPy, shared by every encoder (and mirrored in training).

Frames are taken without centring padding, with a periodic Hann window, so a window of audio maps
to a fixed number of frames: ``1 + (window_samples - n_fft) // hop``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale (as used by VGGish)."""
    mel: np.ndarray = 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)
    return mel


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, shape (n_fft // 2 + 1, n_mels).

    Triangles are evaluated in the mel domain over the FFT bin centres, the construction VGGish's
    reference ``mel_features.py`` uses; the DC bin is excluded.
    """
    n_bins = n_fft // 2 + 1
    bin_mel = hz_to_mel(np.linspace(0.0, sample_rate / 2.0, n_bins))
    edges = np.linspace(float(hz_to_mel(fmin_hz)), float(hz_to_mel(fmax_hz)), n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bin_mel[:, None]) / (upper - centre)[None, :]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    filterbank: np.ndarray = weights.astype(np.float32)
    return filterbank


@dataclass(frozen=True)
class MelSpec:
    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    fmin_hz: float
    fmax_hz: float
    log_offset: float = 1e-6
    magnitude: bool = True
    """``True``: mel of |STFT| (VGGish); ``False``: mel of power |STFT|²."""

    @cached_property
    def filterbank(self) -> np.ndarray:
        return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin_hz, self.fmax_hz)

    @cached_property
    def window(self) -> np.ndarray:
        n = np.arange(self.win_length)
        return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.win_length)).astype(np.float32)

    def n_frames(self, n_samples: int) -> int:
        return 1 + (n_samples - self.win_length) // self.hop_length


def log_mel(audio: np.ndarray, spec: MelSpec) -> np.ndarray:
    """Log-mel spectrogram of a batch of equal-length windows: (n, samples) -> (n, frames, n_mels)."""
    batch = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    frames = sliding_window_view(batch, spec.win_length, axis=1)[:, :: spec.hop_length]
    spectrum = np.abs(np.fft.rfft(frames * spec.window, n=spec.n_fft, axis=-1)).astype(np.float32)
    if not spec.magnitude:
        spectrum = spectrum * spectrum
    mel = spectrum @ spec.filterbank
    result: np.ndarray = np.log(mel + spec.log_offset).astype(np.float32)
    return result
