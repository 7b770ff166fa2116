"""In-memory implementations of the package's Protocols: one fake serves every unit test.

``FakeCatalog`` implements ``tunetrace.store.Catalog`` exactly (brute-force inner-product search
over the vectors it was given), so the voting and pipeline stages run unchanged against it,
without Milvus.  It can also hang or fail on demand, as a stuck or restarting Milvus does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from tunetrace.errors import CatalogError
from tunetrace.store import CatalogShape, Hit, Track, catalog_shape


class FakeCatalog:
    """A ``Catalog`` held in memory."""

    def __init__(self) -> None:
        self._tracks: dict[int, Track] = {}
        self._vectors = np.zeros((0, 0), np.float32)
        self._rows: list[tuple[int, float]] = []
        self.searches = 0
        self.hang = threading.Event()
        """While set, searches block until ``release`` is set (at most 30 s): a stuck catalog."""
        self.release = threading.Event()
        self.failing = False
        """While true, searches raise ``CatalogError``: an unreachable catalog."""

    def add(self, track: Track, vectors: np.ndarray, offsets_s: Sequence[float]) -> None:
        """Index ``vectors`` (one per window, unit length) as ``track`` at ``offsets_s``."""
        self._tracks[track.track_id] = track
        rows = np.asarray(vectors, np.float32)
        self._vectors = rows if self._vectors.size == 0 else np.vstack([self._vectors, rows])
        self._rows.extend((track.track_id, float(o)) for o in offsets_s)

    @property
    def shape(self) -> CatalogShape:
        return catalog_shape(self.tracks())

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        self.searches += 1
        if self.hang.is_set():
            self.release.wait(30)
        if self.failing:
            raise CatalogError("the fake catalog is down")
        if self._vectors.size == 0:
            return [[] for _ in range(len(vectors))]
        scores = np.asarray(vectors, np.float32) @ self._vectors.T
        nearest = np.argsort(-scores, axis=1)[:, :top_k]
        return [
            [Hit(q, self._rows[i][0], self._rows[i][1], float(scores[q, i])) for i in row]
            for q, row in enumerate(nearest)
        ]

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        return {t: self._tracks[t] for t in track_ids if t in self._tracks}

    def tracks(self) -> list[Track]:
        return list(self._tracks.values())


def fake_track(track_id: int, title: str, n_vectors: int, duration_s: float) -> Track:
    return Track(
        track_id=track_id, title=title, artist="", album="", duration_s=duration_s, source_path="",
        content_hash=f"fake-{track_id}", n_vectors=n_vectors, ingested_at=time.time(),
    )
