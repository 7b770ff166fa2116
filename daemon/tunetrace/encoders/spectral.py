"""The weight-free baseline: a normalised log-mel patch reduced by a fixed orthogonal projection.

It works out of the box and is honest about what it is: the floor that trained models must beat.
Mean-removal per mel band makes it insensitive to gain and static equalisation; averaging blocks of
four frames (128 ms) buys some tolerance to windows that are not aligned with the catalog's; the
projection (seeded, so every install produces identical vectors) keeps 128 dimensions.
"""

from __future__ import annotations

import numpy as np

from tunetrace.audio.features import MelSpec, log_mel
from tunetrace.encoders.base import EncoderInfo, l2_normalise

SAMPLE_RATE = 8000
WINDOW_S = 1.0
HOP_S = 0.5
DIMENSION = 128
PROJECTION_SEED = 20240601
FRAMES_PER_BLOCK = 4
MEL = MelSpec(
    sample_rate=SAMPLE_RATE, n_fft=512, win_length=512, hop_length=256, n_mels=32,
    fmin_hz=100.0, fmax_hz=3800.0, log_offset=1e-3, magnitude=False,
)


def _projection(n_inputs: int) -> np.ndarray:
    rng = np.random.default_rng(PROJECTION_SEED)
    q, _ = np.linalg.qr(rng.standard_normal((n_inputs, DIMENSION)))
    return q.astype(np.float32)


class SpectralEncoder:
    def __init__(self) -> None:
        n_blocks = MEL.n_frames(round(WINDOW_S * SAMPLE_RATE)) // FRAMES_PER_BLOCK
        self._projection = _projection(n_blocks * MEL.n_mels)
        self._info = EncoderInfo("spectral-v2", SAMPLE_RATE, WINDOW_S, HOP_S, DIMENSION, "IP")

    @property
    def info(self) -> EncoderInfo:
        return self._info

    def embed(self, windows: np.ndarray) -> np.ndarray:
        if windows.shape[0] == 0:
            return np.zeros((0, DIMENSION), np.float32)
        patches = log_mel(windows, MEL)
        patches = patches - patches.mean(axis=1, keepdims=True)
        n, frames, mels = patches.shape
        usable = frames // FRAMES_PER_BLOCK * FRAMES_PER_BLOCK
        blocks = patches[:, :usable].reshape(n, usable // FRAMES_PER_BLOCK, FRAMES_PER_BLOCK, mels)
        flat = blocks.mean(axis=2).reshape(n, -1)
        return l2_normalise(flat @ self._projection)
