"""One-shot recognition: audio in, the catalog track, its position and a confidence out.

A ``Recognizer`` holds the encoder, the store and the catalog shape, opened once, so that many
queries in one call are cheap.  Speed changes are handled by also trying the query resampled at
the configured ratios; the best time-consistent answer wins and reports its ratio.

Memory is bounded whatever the query's length: windows are cut as views of the audio and embedded
and searched ``batch_size`` at a time, so only the hits (a few bytes per window) accumulate; the
caller decodes at most ``matcher.max_query_s`` seconds.  Silent windows (below
``matcher.silence_threshold_dbfs``) are neither embedded nor searched, as on the live path: silence
is not music, and a silent catalog track would otherwise "match" every silent query.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tunetrace.audio.resample import speed_change
from tunetrace.audio.windows import WindowSpec
from tunetrace.config import MatcherConfig
from tunetrace.encoders.base import Encoder
from tunetrace.store import Catalog, CatalogShape, Hit, Track, catalog_shape
from tunetrace.voting import Candidate, VotingParams, decisive, vote

_CONTRAST_CANDIDATES = 8
"""Candidates ranked per query: enough to find the best track other than the winner."""


NoMatchReason = Literal["silent", "too_short"]


@dataclass(frozen=True)
class Identification:
    """The answer for one query. ``track`` is ``None`` for an honest "no match"."""

    track: Track | None
    offset_s: float
    """Where in the track the query starts (seconds)."""
    confidence: float
    speed_ratio: float
    aligned_windows: int
    query_windows: int
    best_candidate: Candidate | None
    """The strongest candidate even when it did not pass the threshold (for diagnostics)."""
    note: NoMatchReason | None = None
    """Why there could be no answer at all: ``silent`` or ``too_short`` (``None`` otherwise)."""

    @property
    def matched(self) -> bool:
        return self.track is not None


class Recognizer:
    def __init__(
        self, encoder: Encoder, store: Catalog, config: MatcherConfig, *, batch_size: int = 64,
    ) -> None:
        self._encoder = encoder
        self._store = store
        self._config = config
        self._batch_size = batch_size
        info = encoder.info
        self._query_spec = info.window_spec.with_hop(config.query_hop_s or info.hop_s / 10)
        self._params = VotingParams.from_config(config, info.hop_s)
        self._shape = catalog_shape(store.tracks())
        self._silence_rms = 10.0 ** (config.silence_threshold_dbfs / 20.0)

    @property
    def shape(self) -> CatalogShape:
        return self._shape

    def refresh(self) -> None:
        """Re-read the catalog's track list (after an ingest by another process)."""
        self._shape = catalog_shape(self._store.tracks())

    def identify(self, audio: np.ndarray) -> Identification:
        """``audio``: mono float32 at the encoder's sample rate."""
        if audio.size < self._query_spec.window_samples:
            return Identification(None, 0.0, 0.0, 1.0, 0, 0, None, "too_short")
        best: Candidate | None = None
        audible_somewhere = False
        for ratio in self._config.speed_ratios:
            # Audio played ``ratio`` times fast is slowed back down by resampling with 1/ratio.
            restored = speed_change(audio, 1.0 / ratio)
            hits, times_s = self._search(restored)
            if not hits:
                continue
            audible_somewhere = True
            ranked = vote(hits, times_s, self._params, self._shape, max_candidates=_CONTRAST_CANDIDATES)
            span_s = float(times_s[-1] - times_s[0])
            winner = decisive(ranked, span_s, self._params.catalog_hop_s)
            if winner is not None and (best is None or winner.confidence > best.confidence):
                best = replace(winner, speed_ratio=ratio)
        if not audible_somewhere:
            return Identification(None, 0.0, 0.0, 1.0, 0, 0, None, "silent")
        return self._decide(best)

    def _search(self, audio: np.ndarray) -> tuple[list[list[Hit]], np.ndarray]:
        """Neighbours of every audible window and its start time, ``batch_size`` windows at a time."""
        spec: WindowSpec = self._query_spec
        if audio.size < spec.window_samples:
            return [], np.zeros(0)
        views = sliding_window_view(audio, spec.window_samples)[:: spec.hop_samples]
        hits: list[list[Hit]] = []
        starts: list[np.ndarray] = []
        for first in range(0, views.shape[0], self._batch_size):
            windows = np.ascontiguousarray(views[first : first + self._batch_size], dtype=np.float32)
            rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))
            audible = np.flatnonzero(rms >= self._silence_rms)
            if audible.size == 0:
                continue
            hits.extend(self._store.search(self._encoder.embed(windows[audible]), self._config.top_k))
            starts.append((first + audible) * spec.hop_samples)
        times_s = np.concatenate(starts) / spec.sample_rate if starts else np.zeros(0)
        return hits, times_s

    def _decide(self, best: Candidate | None) -> Identification:
        if best is None:
            return Identification(None, 0.0, 0.0, 1.0, 0, 0, None)
        passes = (
            best.confidence >= self._config.min_confidence
            and best.aligned_windows >= self._config.min_aligned_windows
        )
        track = self._store.get_tracks([best.track_id]).get(best.track_id) if passes else None
        if track is None:
            return Identification(
                None, 0.0, best.confidence, best.speed_ratio, best.aligned_windows,
                best.query_windows, best,
            )
        return Identification(
            track, max(0.0, best.alignment_s), best.confidence, best.speed_ratio,
            best.aligned_windows, best.query_windows, best,
        )
