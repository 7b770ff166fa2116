"""Encoder and catalog wrappers that time each call for the metrics, implementing the same Protocols.

Wrapping keeps the voter untouched: it embeds and searches as before, and the time goes to the
station's (search) or the process's (embedding) metrics. Both run in the embedding executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from tunetrace.encoders.base import Encoder, EncoderInfo
from tunetrace.observe.base import PipelineMetrics, StationMetrics
from tunetrace.store.base import Catalog, Hit, Reference, Track, TrackSpan


class TimedEncoder:
    def __init__(
        self, encoder: Encoder, metrics: PipelineMetrics, *, clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._encoder = encoder
        self._metrics = metrics
        self._clock = clock

    @property
    def info(self) -> EncoderInfo:
        return self._encoder.info

    def embed(self, windows: np.ndarray) -> np.ndarray:
        started = self._clock()
        vectors = self._encoder.embed(windows)
        self._metrics.embedded(self._clock() - started, len(windows))
        return vectors


class TimedCatalog:
    def __init__(
        self, catalog: Catalog, metrics: StationMetrics, *, clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._catalog = catalog
        self._metrics = metrics
        self._clock = clock

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        started = self._clock()
        ok = False
        try:
            hits = self._catalog.search(vectors, top_k)
            ok = True
            return hits
        finally:
            self._metrics.searched(self._clock() - started, ok=ok)

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        return self._catalog.get_tracks(track_ids)

    def tracks(self) -> list[Track]:
        return self._catalog.tracks()

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        return self._catalog.references(spans)
