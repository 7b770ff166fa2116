"""An exact-search catalog held in memory: the reference that approximate indexes are measured
against, and the catalog of checks too small to need Milvus (a distractor against its sources)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunetrace.store.base import Hit, Reference, Track, TrackSpan
from tunetrace.store.resident import VectorTable


class MemoryCatalog:
    """A ``Catalog`` over NumPy arrays: brute-force inner product, every neighbour exact."""

    def __init__(self) -> None:
        self._tracks: dict[int, Track] = {}
        self._parts: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._table: VectorTable | None = None

    def add_track(self, track: Track, embeddings: np.ndarray, offsets_s: np.ndarray) -> None:
        if embeddings.shape[0] != offsets_s.shape[0]:
            raise ValueError("one offset per embedding is required")
        self._tracks[track.track_id] = track
        self._parts.append((track.track_id, np.asarray(embeddings, np.float32), np.asarray(offsets_s)))
        self._table = None

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        return self._vector_table().search(vectors, top_k)

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        return self._vector_table().references(spans)

    def _vector_table(self) -> VectorTable:
        if self._table is None:
            dimension = self._parts[0][1].shape[1] if self._parts else 0
            self._table = VectorTable.of(self._parts, dimension)
        return self._table

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        return {t: self._tracks[t] for t in track_ids if t in self._tracks}

    def tracks(self) -> list[Track]:
        return list(self._tracks.values())
