"""One-shot recognition: audio in, the catalog track, its position and a confidence out.

A ``Recognizer`` holds the encoder, the store and the catalog shape, opened once, so that many
queries in one call are cheap.  Speed changes are handled by also trying the query resampled at
the configured ratios; the best time-consistent answer wins and reports its ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tunetrace.audio.resample import speed_change
from tunetrace.audio.windows import frame
from tunetrace.config import MatcherConfig
from tunetrace.encoders.base import Encoder
from tunetrace.store import Catalog, CatalogShape, Track, catalog_shape
from tunetrace.voting import Candidate, VotingParams, decisive, vote

_CONTRAST_CANDIDATES = 8
"""Candidates ranked per query: enough to find the best track other than the winner."""


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

    @property
    def matched(self) -> bool:
        return self.track is not None


class Recognizer:
    def __init__(self, encoder: Encoder, store: Catalog, config: MatcherConfig) -> None:
        self._encoder = encoder
        self._store = store
        self._config = config
        info = encoder.info
        self._query_spec = info.window_spec.with_hop(config.query_hop_s or info.hop_s / 10)
        self._params = VotingParams.from_config(config, info.hop_s)
        self._shape = catalog_shape(store.tracks())

    @property
    def shape(self) -> CatalogShape:
        return self._shape

    def refresh(self) -> None:
        """Re-read the catalog's track list (after an ingest by another process)."""
        self._shape = catalog_shape(self._store.tracks())

    def identify(self, audio: np.ndarray) -> Identification:
        """``audio``: mono float32 at the encoder's sample rate."""
        best: Candidate | None = None
        for ratio in self._config.speed_ratios:
            # Audio played ``ratio`` times fast is slowed back down by resampling with 1/ratio.
            restored = speed_change(audio, 1.0 / ratio)
            windows, starts = frame(restored, self._query_spec)
            if windows.shape[0] == 0:
                continue
            vectors = self._encoder.embed(windows)
            hits = self._store.search(vectors, self._config.top_k)
            times_s = starts / self._query_spec.sample_rate
            ranked = vote(hits, times_s, self._params, self._shape, max_candidates=_CONTRAST_CANDIDATES)
            span_s = float(times_s[-1] - times_s[0])
            winner = decisive(ranked, span_s, self._params.catalog_hop_s)
            if winner is not None and (best is None or winner.confidence > best.confidence):
                best = replace(winner, speed_ratio=ratio)
        return self._decide(best)

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
