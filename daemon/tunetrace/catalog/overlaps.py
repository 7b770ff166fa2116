"""Recordings the catalog holds twice: a track whose audio is also inside another track.

A remaster, a radio edit, a medley or the same recording ingested from two different files is the
same audio to a listener and to the fingerprint: while it plays, both tracks are right answers,
and the play record names whichever the votes favoured first. On the live benchmark streams every
false play was such a pair (warzone2100's ``menu`` inside its ``menu_enhanced`` remaster).
Content hashes only catch byte-identical audio; this finds shared audio by searching a sample of
each track's own catalog windows against the catalog and keeping what agrees in time, so that an
operator can see the pairs and decide (remove one, or know that their plays are interchangeable).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tunetrace.store.base import Hit, Track


class OverlapCatalog(Protocol):
    """What the search needs from a catalog (``store.milvus.CatalogStore`` has it)."""

    def tracks(self) -> list[Track]: ...

    def track_vectors(self, track_id: int) -> tuple[np.ndarray, np.ndarray]: ...

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]: ...


@dataclass(frozen=True)
class OverlapParams:
    catalog_hop_s: float
    """The catalog's window hop: alignments closer than this are one alignment."""
    probe_every_s: float = 2.0
    """One of each track's windows per this much audio is searched (all of them: slower, no better)."""
    top_k: int = 5
    min_similarity: float = 0.5
    """Neighbours less similar than this are not evidence of shared audio."""
    min_shared_s: float = 20.0
    """Shared audio shorter than this is not reported (a jingle, a common intro)."""
    min_density: float = 0.5
    """Of the probes inside the shared span, at least this share must have found it (chance
    neighbours at one alignment are scattered; shared audio is found probe after probe)."""


@dataclass(frozen=True)
class Overlap:
    """``track``'s audio from ``track_start_s`` to ``track_end_s`` is in ``other`` from ``other_start_s``."""

    track: Track
    other: Track
    track_start_s: float
    track_end_s: float
    other_start_s: float
    probes_found: int
    probes_in_span: int

    @property
    def shared_s(self) -> float:
        return self.track_end_s - self.track_start_s

    @property
    def share_of_track(self) -> float:
        """The part of ``track`` that is also in ``other`` (1.0: all of it)."""
        return min(1.0, self.shared_s / self.track.duration_s) if self.track.duration_s > 0 else 0.0


Progress = Callable[[int, int], None]
"""Called with (tracks searched, tracks in all) after each track."""


def find_overlaps(
    catalog: OverlapCatalog, params: OverlapParams, progress: Progress | None = None,
) -> list[Overlap]:
    """Every shared stretch of audio, once per direction (``a`` in ``b`` and ``b`` in ``a``),
    longest first. Blocking: one search per track of ``duration / probe_every_s`` windows."""
    tracks = catalog.tracks()
    by_id = {t.track_id: t for t in tracks}
    found: list[Overlap] = []
    step = max(1, round(params.probe_every_s / params.catalog_hop_s))
    for done, track in enumerate(tracks, start=1):
        vectors, offsets = catalog.track_vectors(track.track_id)
        order = np.argsort(offsets, kind="stable")[::step]
        if order.size:
            hits = catalog.search(vectors[order], params.top_k)
            found.extend(overlaps_of(track, offsets[order], hits, by_id, params))
        if progress is not None:
            progress(done, len(tracks))
    return sorted(found, key=lambda o: (-o.shared_s, o.track.track_id, o.other.track_id))


def overlaps_of(
    track: Track, probe_offsets_s: np.ndarray, hits: Sequence[Sequence[Hit]], by_id: dict[int, Track],
    params: OverlapParams,
) -> list[Overlap]:
    """The other tracks that ``track``'s probe windows (at ``probe_offsets_s``, sorted) find at
    one alignment over at least ``min_shared_s``; at most one stretch per other track."""
    hop_s = params.catalog_hop_s
    found_at: dict[tuple[int, int], set[float]] = defaultdict(set)
    for offset_s, window_hits in zip(probe_offsets_s.tolist(), hits, strict=True):
        for hit in window_hits:
            if hit.track_id != track.track_id and hit.similarity >= params.min_similarity:
                found_at[(hit.track_id, round((hit.offset_s - offset_s) / hop_s))].add(offset_s)
    best: dict[int, Overlap] = {}
    for (other_id, band), _ in found_at.items():
        other = by_id.get(other_id)
        if other is None:
            continue
        # A probe between two catalog windows finds either: neighbouring bands are one alignment.
        probes = sorted(found_at[(other_id, band)] | found_at.get((other_id, band + 1), set()))
        stretch = _densest_stretch(probes, probe_offsets_s, params)
        if stretch is None:
            continue
        start_s, end_s, count, in_span = stretch
        overlap = Overlap(track, other, start_s, end_s, start_s + band * hop_s, count, in_span)
        if other_id not in best or overlap.shared_s > best[other_id].shared_s:
            best[other_id] = overlap
    return list(best.values())


def _densest_stretch(
    probes_s: list[float], all_probes_s: np.ndarray, params: OverlapParams,
) -> tuple[float, float, int, int] | None:
    """The longest run of found probes with no gap over ``min_shared_s / 2``, as (start, end,
    probes found, probes in the span), if it is long and dense enough."""
    if not probes_s:
        return None
    spacing_s = params.probe_every_s
    runs: list[list[float]] = [[probes_s[0]]]
    for offset_s in probes_s[1:]:
        if offset_s - runs[-1][-1] > params.min_shared_s / 2:
            runs.append([])
        runs[-1].append(offset_s)
    run = max(runs, key=lambda r: r[-1] - r[0])
    start_s, end_s = run[0], run[-1] + spacing_s
    in_span = int(np.count_nonzero((all_probes_s >= start_s) & (all_probes_s <= run[-1])))
    if end_s - start_s < params.min_shared_s or len(run) < params.min_density * max(1, in_span):
        return None
    return start_s, end_s, len(run), in_span


def pairs(overlaps: Sequence[Overlap]) -> list[Overlap]:
    """One overlap per pair of tracks: the direction in which the shared audio is the larger part
    of its track (``menu`` is all inside ``menu_enhanced``, not the other way round)."""
    chosen: dict[tuple[int, int], Overlap] = {}
    for overlap in overlaps:
        a, b = overlap.track.track_id, overlap.other.track_id
        key = (min(a, b), max(a, b))
        if key not in chosen or overlap.share_of_track > chosen[key].share_of_track:
            chosen[key] = overlap
    return sorted(chosen.values(), key=lambda o: (-o.shared_s, o.track.track_id, o.other.track_id))
