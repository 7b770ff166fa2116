"""The live daemon's catalog searches, answered from an exact copy of the vectors in its memory.

Each live window costs one search. Milvus Lite answers it by a brute-force scan in its own server
process, plus a gRPC round trip and the decoding of its answer: ~0.8-1.2 ms of CPU per query
vector on the 29k-vector soundtrack catalog, a third of what a station costs on air
(docs/benchmarks.md). The same scan as one matrix product in this process, over every station's
windows of a tick at once, costs a few percent of that. The neighbours are the same ones (exact
inner product, or squared L2 as Milvus computes it), so recognition does not change.

Only embedded (Milvus Lite) catalogs up to ``milvus.resident_max_vectors`` are copied (4 bytes
per dimension per vector: the 29k-vector catalog is 15 MB, 300,000 vectors 154 MB); larger ones,
and a server's (whose index is built for it, and which other daemons share), are searched by
Milvus. The copy follows the catalog: ``sync`` loads the vectors of
tracks added or changed and drops removed ones, and the daemon's ``LiveCatalog`` calls it before
the stations hear of a change. The limit holds while the daemon runs too: a catalog that grows past
it (tracks ingested through the daemon) is searched by Milvus and the copy freed, and one that
shrinks back under it (tracks removed), or starts over it and shrinks, is copied; so the limit
bounds the daemon's memory however the catalog got there. Writes and metadata always go to the
store itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tunetrace.store.base import Hit, Reference, Track, TrackSpan

log = logging.getLogger(__name__)

SEARCH_BLOCK = 256
"""Query vectors scored per matrix product (bounds the score matrix to block x catalog floats)."""


class VectorStore(Protocol):
    """What the copy is read from, and what answers while the catalog is over the limit
    (``CatalogStore``)."""

    def tracks(self) -> list[Track]: ...

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]: ...

    def track_vectors(self, track_id: int) -> tuple[np.ndarray, np.ndarray]: ...

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]: ...

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]: ...


@dataclass(frozen=True)
class VectorTable:
    """Every vector of a catalog with its track and offset (read-only once built).

    The vectors are kept as columns (dimension x vectors, contiguous): a query block times that
    matrix is the BLAS product that streams the catalog once, twice as fast as against the
    transposed view of row vectors."""

    columns: np.ndarray
    track_ids: np.ndarray
    offsets_s: np.ndarray

    @classmethod
    def of(cls, parts: Sequence[tuple[int, np.ndarray, np.ndarray]], dimension: int) -> VectorTable:
        """``parts``: (track id, its vectors, their offsets) per track."""
        if not parts:
            return cls(np.zeros((dimension, 0), np.float32), np.zeros(0, np.int64), np.zeros(0))
        return cls(
            np.ascontiguousarray(np.concatenate([vectors for _, vectors, _ in parts]).T, np.float32),
            np.concatenate([np.full(len(offsets), track_id, np.int64) for track_id, _, offsets in parts]),
            np.concatenate([np.asarray(offsets, np.float64) for _, _, offsets in parts]),
        )

    @property
    def size(self) -> int:
        return int(self.columns.shape[1])

    def rows_of(self, track_ids: Collection[int]) -> VectorTable:
        """The vectors of these tracks only (a copy: the table it came from can then be freed)."""
        keep = np.isin(self.track_ids, np.asarray(list(track_ids), np.int64))
        columns = np.ascontiguousarray(self.columns[:, keep])
        return VectorTable(columns, self.track_ids[keep], self.offsets_s[keep])

    def joined(self, other: VectorTable) -> VectorTable:
        return VectorTable(
            np.ascontiguousarray(np.hstack([self.columns, other.columns])),
            np.concatenate([self.track_ids, other.track_ids]),
            np.concatenate([self.offsets_s, other.offsets_s]),
        )

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        """The rows of each span in offset order (copies: a few windows per span)."""
        found: list[Reference] = []
        for span in spans:
            inside = (self.offsets_s >= span.from_s) & (self.offsets_s <= span.to_s)
            rows = np.flatnonzero((self.track_ids == span.track_id) & inside)
            rows = rows[np.argsort(self.offsets_s[rows], kind="stable")]
            found.append(Reference(np.ascontiguousarray(self.columns[:, rows].T), self.offsets_s[rows]))
        return found

    def search(self, vectors: np.ndarray, top_k: int, metric: str = "IP") -> list[list[Hit]]:
        """Exact ``top_k`` neighbours per query vector, most similar first (similarity as
        ``CatalogStore.search`` reports it: the inner product, or minus the squared L2 distance)."""
        queries = np.asarray(vectors, np.float32)
        if self.size == 0:
            return [[] for _ in range(queries.shape[0])]
        k = min(top_k, self.size)
        norms = np.einsum("ij,ij->j", self.columns, self.columns) if metric == "L2" else None
        found: list[list[Hit]] = []
        for start in range(0, queries.shape[0], SEARCH_BLOCK):
            block = queries[start : start + SEARCH_BLOCK]
            scores = block @ self.columns
            if norms is not None:  # -|q - v|^2 = 2 q.v - |v|^2 - |q|^2
                scores = 2.0 * scores - norms[None, :] - np.einsum("ij,ij->i", block, block)[:, None]
            nearest = _largest(scores, k)
            nearest_scores = np.take_along_axis(scores, nearest, axis=1)
            order = np.argsort(-nearest_scores, axis=1, kind="stable")
            rows = np.take_along_axis(nearest, order, axis=1)
            similarities = np.take_along_axis(nearest_scores, order, axis=1).tolist()
            track_ids, offsets = self.track_ids[rows].tolist(), self.offsets_s[rows].tolist()
            found.extend(
                [Hit(start + row, *hit) for hit in zip(track_ids[row], offsets[row], similarities[row],
                                                       strict=True)]
                for row in range(rows.shape[0])
            )
        return found


SCORE_RUN = 64
"""Catalog vectors per run in the two-step top-k selection (``_largest``)."""


def _largest(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest scores, unordered.

    In two steps: the ``k`` largest elements lie in the ``k`` runs (of ``SCORE_RUN`` columns)
    with the largest maxima, since any other run has ``k`` elements above its own maximum; so
    only the maxima and those ``k`` runs are partitioned, ~10x less work than the whole row.
    """
    n_queries, n = scores.shape
    runs = -(-n // SCORE_RUN)
    if runs <= 2 * k:
        return np.argpartition(scores, n - k, axis=1)[:, n - k :]
    padded = np.full((n_queries, runs * SCORE_RUN), -np.inf, np.float32)
    padded[:, :n] = scores
    by_run = padded.reshape(n_queries, runs, SCORE_RUN)
    best_runs = np.argpartition(by_run.max(axis=2), runs - k, axis=1)[:, runs - k :]
    candidates = by_run[np.arange(n_queries)[:, None], best_runs].reshape(n_queries, k * SCORE_RUN)
    columns = (best_runs[:, :, None] * SCORE_RUN + np.arange(SCORE_RUN)).reshape(n_queries, k * SCORE_RUN)
    chosen = np.argpartition(candidates, k * SCORE_RUN - k, axis=1)[:, k * SCORE_RUN - k :]
    return np.take_along_axis(columns, chosen, axis=1)


def single_threaded_blas() -> None:
    """One BLAS thread for the rest of this process's life.

    A tick's search is a (windows x dimension) by (dimension x catalog) product: too small to
    share, and OpenBLAS's other threads spin while they wait for work (measured: 8.6 ms of CPU for
    13 windows against 29k vectors with its default threads, 2.1 ms with one). The daemon's other
    NumPy work (the log-mel front end) costs the same either way."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class ResidentCatalog:
    """A ``Catalog`` whose searches are answered from an exact in-memory copy of ``store``'s vectors
    while it holds at most ``max_vectors``, and by ``store`` while it holds more."""

    def __init__(
        self, store: VectorStore, tracks: Sequence[Track], dimension: int, metric: str, *, max_vectors: int,
    ) -> None:
        single_threaded_blas()
        self._store = store
        self._dimension = dimension
        self._metric = metric
        self._max_vectors = max_vectors
        self._tracks: dict[int, Track] = {}
        self._table: VectorTable | None = None
        """``None``: the catalog is over ``max_vectors`` and ``store`` answers the searches."""
        self._syncing = threading.Lock()
        """One ``sync`` at a time: the periodic refresh and an ingest's may overlap, and an older
        track list must not replace a newer copy (searches read ``_table`` once, without it)."""
        self._load(tracks)

    @property
    def vectors(self) -> int:
        """Vectors held in memory (0 while the store answers)."""
        table = self._table
        return 0 if table is None else table.size

    @property
    def total_vectors(self) -> int:
        """Vectors of the tracks this catalog follows, in memory or not."""
        return sum(t.n_vectors for t in self._tracks.values())

    def sync(self, tracks: Sequence[Track]) -> None:
        """Blocking: make the copy hold exactly ``tracks`` (the store's complete tracks now).

        A track is read again when its record changed (re-ingested or re-tagged); the others keep
        their rows of the current table, so the vectors are held once. The table is swapped in
        whole, so a search running meanwhile sees the old one or the new one. Tracks of more than
        ``max_vectors`` in all are not copied: the table is dropped and the store searched.
        """
        with self._syncing:
            was_copied = self._table is not None
            self._load(tracks)
            if was_copied and self._table is None:
                log.warning(
                    "the catalog now holds %d vectors, more than milvus.resident_max_vectors (%d): live "
                    "searches go to the catalog store (more CPU per station) and the in-memory copy is "
                    "freed until it is back under the limit; raise resident_max_vectors to keep one "
                    "(4 bytes per dimension per vector), or move a catalog this size to a Milvus server "
                    "(docs/scaling.md)", self.total_vectors, self._max_vectors)
            elif self._table is not None and not was_copied:
                log.info("the catalog holds %d vectors, within milvus.resident_max_vectors: live "
                         "searches from an in-memory copy again", self._table.size)

    def _load(self, tracks: Sequence[Track]) -> None:
        wanted = {t.track_id: t for t in tracks}
        if sum(t.n_vectors for t in tracks) > self._max_vectors:
            self._table = None
            self._tracks = wanted
            return
        table, copied = self._table, self._tracks
        if table is None:
            table, copied = VectorTable.of([], self._dimension), {}
        unchanged = {i for i, track in copied.items() if wanted.get(i) == track}
        read = [(i, *self._store.track_vectors(i)) for i in wanted if i not in unchanged]
        self._table = table.rows_of(unchanged).joined(VectorTable.of(read, self._dimension))
        self._tracks = wanted

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        table = self._table
        if table is None:
            return self._store.search(vectors, top_k)
        return table.search(vectors, top_k, self._metric)

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        table = self._table
        if table is None:
            return self._store.references(spans)
        return table.references(spans)

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        tracks = self._tracks  # one read: ``sync`` may swap it meanwhile
        known = {i: tracks[i] for i in track_ids if i in tracks}
        missing = [i for i in track_ids if i not in known]
        return known | (self._store.get_tracks(missing) if missing else {})

    def tracks(self) -> list[Track]:
        return self._store.tracks()
