"""In-memory implementations of the package's Protocols: one fake serves every unit test.

``FakeCatalog`` is the exact-search ``MemoryCatalog`` (a real ``tunetrace.store.Catalog``), so the
voting and pipeline stages run unchanged against it, without Milvus; it can also hang or fail on
demand, as a stuck or restarting Milvus does.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from tunetrace.errors import CatalogError
from tunetrace.store import CatalogShape, Hit, Track, catalog_shape
from tunetrace.store.memory import MemoryCatalog


class FakeCatalog(MemoryCatalog):
    """A ``Catalog`` held in memory that counts searches and can hang or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.searches = 0
        self.searched_vectors = 0
        self.hang = threading.Event()
        """While set, searches block until ``release`` is set (at most 30 s): a stuck catalog."""
        self.release = threading.Event()
        self.failing = False
        """While true, searches raise ``CatalogError``: an unreachable catalog."""

    @property
    def shape(self) -> CatalogShape:
        return catalog_shape(self.tracks())

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        self.searches += 1
        self.searched_vectors += len(vectors)
        if self.hang.is_set():
            self.release.wait(30)
        if self.failing:
            raise CatalogError("the fake catalog is down")
        return super().search(vectors, top_k)


def fake_track(track_id: int, title: str, n_vectors: int, duration_s: float) -> Track:
    return Track(
        track_id=track_id, title=title, artist="", album="", duration_s=duration_s, source_path="",
        content_hash=f"fake-{track_id}", n_vectors=n_vectors, ingested_at=time.time(),
    )
