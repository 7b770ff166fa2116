"""Resampling and speed changes: the one implementation every stage uses (identify's speed search,
the evaluation's and the training's speed degradations)."""

from __future__ import annotations

from math import gcd
from typing import Any

import numpy as np


def _f32(values: Any) -> np.ndarray:
    out: np.ndarray = np.asarray(values, dtype=np.float32)
    return out


def _resample_poly(audio: np.ndarray, up: int, down: int) -> np.ndarray:
    from scipy.signal import resample_poly  # seconds to import: only when a rate really changes

    return _f32(resample_poly(audio, up, down))


def _ratio(value: float, precision: int = 1000) -> tuple[int, int]:
    """``value`` as a reduced fraction ``up/down`` with ``down == precision`` before reduction."""
    up, down = round(value * precision), precision
    divisor = gcd(up, down)
    return up // divisor, down // divisor


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Polyphase resampling between two integer rates (anti-aliased)."""
    if from_hz == to_hz:
        return _f32(audio)
    divisor = gcd(from_hz, to_hz)
    return _resample_poly(audio, to_hz // divisor, from_hz // divisor)


def speed_change(audio: np.ndarray, speed_ratio: float) -> np.ndarray:
    """Play ``audio`` ``speed_ratio`` times as fast by resampling, as broadcast playout does.

    Tempo and pitch move together (``1.03``: 3% faster, 3% higher, 3% shorter), so the output has
    ``len(audio) / speed_ratio`` samples.
    """
    if abs(speed_ratio - 1.0) < 1e-9:
        return _f32(audio)
    down, up = _ratio(speed_ratio)  # fewer samples out when faster: resample by 1/ratio
    return _resample_poly(audio, up, down)
