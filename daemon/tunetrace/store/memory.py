"""An exact-search catalog held in memory: the reference that approximate indexes are measured
against, and the catalog of checks too small to need Milvus (a distractor against its sources)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunetrace.store.base import Hit, Track

_SEARCH_BLOCK = 256
"""Query vectors scored per matrix product (bounds the score matrix to block x catalog floats)."""


class MemoryCatalog:
    """A ``Catalog`` over NumPy arrays: brute-force inner product, every neighbour exact."""

    def __init__(self) -> None:
        self._tracks: dict[int, Track] = {}
        self._blocks: list[np.ndarray] = []
        self._track_of_row: list[np.ndarray] = []
        self._offset_of_row: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None

    def add_track(self, track: Track, embeddings: np.ndarray, offsets_s: np.ndarray) -> None:
        if embeddings.shape[0] != offsets_s.shape[0]:
            raise ValueError("one offset per embedding is required")
        self._tracks[track.track_id] = track
        self._blocks.append(np.asarray(embeddings, np.float32))
        self._track_of_row.append(np.full(embeddings.shape[0], track.track_id, np.int64))
        self._offset_of_row.append(np.asarray(offsets_s, np.float64))
        self._matrix = None

    def _rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._matrix is None:
            self._matrix = np.concatenate(self._blocks) if self._blocks else np.zeros((0, 0), np.float32)
        tracks = np.concatenate(self._track_of_row) if self._track_of_row else np.zeros(0, np.int64)
        offsets = np.concatenate(self._offset_of_row) if self._offset_of_row else np.zeros(0)
        return self._matrix, tracks, offsets

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        matrix, tracks, offsets = self._rows()
        queries = np.asarray(vectors, np.float32)
        if matrix.size == 0:
            return [[] for _ in range(queries.shape[0])]
        k = min(top_k, matrix.shape[0])
        found: list[list[Hit]] = []
        for start in range(0, queries.shape[0], _SEARCH_BLOCK):
            scores = queries[start : start + _SEARCH_BLOCK] @ matrix.T
            nearest = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for row, candidates in enumerate(nearest):
                ranked = candidates[np.argsort(-scores[row, candidates])]
                found.append([
                    Hit(start + row, int(tracks[i]), float(offsets[i]), float(scores[row, i])) for i in ranked
                ])
        return found

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        return {t: self._tracks[t] for t in track_ids if t in self._tracks}

    def tracks(self) -> list[Track]:
        return list(self._tracks.values())
