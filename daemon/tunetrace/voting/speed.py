"""A one-shot query's playback speed, from how its match drifts against the catalog.

Played ``r`` times fast, a query covers ``r`` seconds of the recording per second, so the catalog
offset its windows match grows as ``offset = a + r * t``. The catalog is indexed every 0.5 s, far
too coarse to see a 3 % drift in a 10 s query from offsets alone (0.3 s in all), but every
catalog window is matched by several query windows 0.125 s apart, and the similarity peaks where
a query window lines up with it. The peak's time, interpolated between the query windows around
it, places each catalog window on the query's clock to a few milliseconds; the slope of catalog
offset against those times is the speed. The live tracker measures the same thing over a whole
play (``tracker.DriftFit``); this is its one-shot counterpart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunetrace.store.base import Hit
from tunetrace.voting.vote import Candidate, VotingParams

MIN_PEAKS = 6
"""Catalog windows whose peak must be found before a slope is trusted."""
MIN_SPAN_S = 8.0
"""Query time the peaks must spread over: a 10 s query reaches it. From 5 s queries the slope
was off by 0.7 % (median) at +-3 and 5 % (docs/models.md, "Speed"): not worth reporting."""
MAX_DRIFT = 0.06
"""Speeds measured: within 6 % of the alignment's own (a broadcast plays at most ~5 % off)."""
MAX_SLOPE_ERROR = 0.0025
"""A slope less certain than this (its standard error, 0.25 %) is not reported: an honest 'not
measured' rather than a speed that may be 1 % off (10 s queries at +-3 and 5 %: 45 % measured,
94 % of those within 0.5 %)."""
OUTLIER_SPREADS = 3.0
OUTLIER_FLOOR_S = 0.01
"""Peaks more than 3 robust spreads (at least 10 ms) off the first line are dropped once."""


def measured_speed(
    hits: Sequence[Sequence[Hit]], query_times_s: np.ndarray, winner: Candidate, params: VotingParams,
) -> float | None:
    """Catalog seconds per query second of ``winner``'s match, or ``None`` if the query is too
    short or too ambiguous to measure it (fewer than ``MIN_PEAKS`` bracketed peaks)."""
    span_s = float(np.max(query_times_s) - np.min(query_times_s)) if len(query_times_s) else 0.0
    if span_s < MIN_SPAN_S:
        return None
    centre_s = float(np.median(query_times_s))
    allowed_s = params.offset_tolerance_s + MAX_DRIFT * span_s / 2.0
    per_window: dict[int, list[tuple[float, float]]] = {}
    for window_hits, time_s in zip(hits, query_times_s, strict=True):
        for hit in window_hits:
            expected_s = winner.alignment_s + float(time_s)
            if hit.track_id == winner.track_id and abs(hit.offset_s - expected_s) <= allowed_s:
                per_window.setdefault(round(hit.offset_s / params.catalog_hop_s), []).append(
                    (float(time_s) - centre_s, hit.similarity)
                )
    peaks = [
        (peak, window * params.catalog_hop_s)
        for window, points in per_window.items()
        if (peak := _peak_time(points)) is not None
    ]
    if len(peaks) < MIN_PEAKS:
        return None
    times, offsets = np.array(peaks).T
    fit = _robust_line(times, offsets)
    if fit is None:
        return None
    slope, standard_error = fit
    return slope if abs(slope - 1.0) <= MAX_DRIFT and standard_error <= MAX_SLOPE_ERROR else None


def _robust_line(times: np.ndarray, offsets: np.ndarray) -> tuple[float, float] | None:
    """Least-squares slope of offset against time and its standard error, after dropping peaks
    far off the first line (a peak found on a repeat of the passage, or on a noisy neighbour)."""
    for _ in range(2):
        if times.size < MIN_PEAKS or float(np.ptp(times)) < MIN_SPAN_S / 2:
            return None
        slope, intercept = np.polyfit(times, offsets, 1)
        residuals = offsets - (slope * times + intercept)
        spread = max(OUTLIER_FLOOR_S, 1.4826 * float(np.median(np.abs(residuals))))
        keep = np.abs(residuals) <= OUTLIER_SPREADS * spread
        if keep.all():
            break
        times, offsets = times[keep], offsets[keep]
    if times.size < MIN_PEAKS:
        return None
    slope, intercept = np.polyfit(times, offsets, 1)
    residuals = offsets - (slope * times + intercept)
    spread_t = float(np.sum(np.square(times - times.mean())))
    standard_error = float(np.sqrt(np.sum(np.square(residuals)) / (times.size - 2) / spread_t))
    return float(slope), standard_error


def _peak_time(points: list[tuple[float, float]]) -> float | None:
    """Where the similarity to one catalog window peaks on the query's clock: a parabola through
    the best query window and its two neighbours (``None`` when the peak is not bracketed)."""
    points.sort()
    times = np.array([p[0] for p in points])
    similarities = np.array([p[1] for p in points])
    best = int(np.argmax(similarities))
    if best == 0 or best == len(points) - 1:
        return None
    before, at, after = similarities[best - 1 : best + 2]
    step_s = times[best] - times[best - 1]
    if not np.isclose(times[best + 1] - times[best], step_s):
        return None  # a neighbour is missing (silent, or its hit fell out of the top k)
    curvature = before - 2.0 * at + after
    if curvature >= 0.0:
        return None
    return float(times[best] + 0.5 * (before - after) / curvature * step_s)
