"""The encoder Protocol every model implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from tunetrace.audio.windows import WindowSpec

Metric = Literal["IP", "L2"]


@dataclass(frozen=True)
class EncoderInfo:
    """What a catalog must record to refuse vectors from a different encoder."""

    encoder_id: str
    """Name plus model version, e.g. ``spectral-v1`` or ``fingerprint-<sha256 prefix>``."""
    sample_rate: int
    window_s: float
    hop_s: float
    """Catalog hop: the spacing of indexed windows."""
    dimension: int
    metric: Metric

    @property
    def window_spec(self) -> WindowSpec:
        return WindowSpec(self.sample_rate, self.window_s, self.hop_s)


class Encoder(Protocol):
    @property
    def info(self) -> EncoderInfo: ...

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """(n, window_samples) float32 audio at ``info.sample_rate`` -> (n, dimension) float32.

        With metric ``IP`` the rows are unit-length, so inner product is cosine similarity.
        """
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalised: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised
