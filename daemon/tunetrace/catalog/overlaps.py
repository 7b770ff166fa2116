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
    """Neighbours of other tracks per probe (the probe's own track's are searched for on top)."""
    min_similarity: float = 0.5
    """Neighbours less similar than this are not evidence of shared audio."""
    min_shared_s: float = 20.0
    """Shared audio shorter than this is not reported (a jingle, a common intro)."""
    min_density: float = 0.5
    """Of the probes inside the shared span, at least this share must have found it (chance
    neighbours at one alignment are scattered; shared audio is found probe after probe)."""


@dataclass(frozen=True)
class Overlap:
    """``track``'s audio between ``track_start_s`` and ``track_end_s`` is in ``other`` at one
    alignment (``track_start_s`` falls at ``other_start_s`` there): ``shared_s`` of it in all, in
    one or more stretches (a remaster may differ in places, music repeats itself)."""

    track: Track
    other: Track
    track_start_s: float
    track_end_s: float
    other_start_s: float
    shared_s: float
    probes_found: int
    probes_in_span: int

    @property
    def share_of_track(self) -> float:
        """The part of ``track`` that is also in ``other`` (1.0: all of it)."""
        return min(1.0, self.shared_s / self.track.duration_s) if self.track.duration_s > 0 else 0.0


Progress = Callable[[int, int], None]
"""Called with (tracks searched, tracks in all) after each track."""

_OWN_NEIGHBOURS = 5
"""A probe is one of its track's own windows: it finds itself and the windows around it (1 s
windows every 0.5 s overlap) first, so this many more neighbours are searched for, or a remaster's
windows would be crowded out of the top k."""


def find_overlaps(
    catalog: OverlapCatalog, params: OverlapParams, progress: Progress | None = None,
    track_ids: Sequence[int] | None = None,
) -> list[Overlap]:
    """Every shared stretch of audio, once per direction (``a`` in ``b`` and ``b`` in ``a``),
    longest first; ``track_ids``: probe only these tracks (against the whole catalog). Blocking:
    one search per probed track of ``duration / probe_every_s`` windows."""
    tracks = catalog.tracks()
    by_id = {t.track_id: t for t in tracks}
    probed = tracks if track_ids is None else [by_id[i] for i in dict.fromkeys(track_ids) if i in by_id]
    found: list[Overlap] = []
    step = max(1, round(params.probe_every_s / params.catalog_hop_s))
    for done, track in enumerate(probed, start=1):
        vectors, offsets = catalog.track_vectors(track.track_id)
        order = np.argsort(offsets, kind="stable")[::step]
        if order.size:
            hits = catalog.search(vectors[order], params.top_k + _OWN_NEIGHBOURS)
            found.extend(overlaps_of(track, offsets[order], hits, by_id, params))
        if progress is not None:
            progress(done, len(probed))
    return sorted(found, key=lambda o: (-o.shared_s, o.track.track_id, o.other.track_id))


def overlaps_of(
    track: Track, probe_offsets_s: np.ndarray, hits: Sequence[Sequence[Hit]], by_id: dict[int, Track],
    params: OverlapParams,
) -> list[Overlap]:
    """The other tracks that ``track``'s probe windows (at ``probe_offsets_s``, sorted, evenly
    spaced) find at one alignment over stretches of at least ``min_shared_s``; per other track
    the alignment that shares the most."""
    hop_s = params.catalog_hop_s
    spacing_s = float(np.median(np.diff(probe_offsets_s))) if probe_offsets_s.size > 1 else hop_s
    # (other track, alignment band) -> {probe offset: that probe's alignment in seconds}
    found_at: dict[tuple[int, int], dict[float, float]] = defaultdict(dict)
    for offset_s, window_hits in zip(probe_offsets_s.tolist(), hits, strict=True):
        for hit in window_hits:
            if hit.track_id != track.track_id and hit.similarity >= params.min_similarity:
                alignment_s = hit.offset_s - offset_s
                found_at[(hit.track_id, round(alignment_s / hop_s))].setdefault(offset_s, alignment_s)
    best: dict[int, Overlap] = {}
    for (other_id, band), here in found_at.items():
        other = by_id.get(other_id)
        if other is None:
            continue
        # A probe between two catalog windows finds either: neighbouring bands are one alignment.
        aligned = found_at.get((other_id, band + 1), {}) | here
        stretches = _stretches(sorted(aligned), probe_offsets_s, spacing_s, params)
        if not stretches:
            continue
        start_s, last_s = stretches[0][0], stretches[-1][1]
        found = [aligned[p] for first, last, _ in stretches for p in aligned if first <= p <= last]
        overlap = Overlap(
            track, other, start_s, min(last_s + spacing_s, track.duration_s),
            max(0.0, start_s + float(np.median(found))),
            sum(min(last + spacing_s, track.duration_s) - first for first, last, _ in stretches),
            len(found), sum(in_span for _, _, in_span in stretches),
        )
        if other_id not in best or overlap.shared_s > best[other_id].shared_s:
            best[other_id] = overlap
    return list(best.values())


def _stretches(
    probes_s: list[float], all_probes_s: np.ndarray, spacing_s: float, params: OverlapParams,
) -> list[tuple[float, float, int]]:
    """The runs of found probes (a gap of up to ``max(min_shared_s / 2, 2 probes)`` allowed inside
    one) that are at least ``min_shared_s`` long and ``min_density`` dense, in order, as (first
    probe, last probe, probes in the run's span)."""
    if len(probes_s) < 2:
        return []
    max_gap_s = max(params.min_shared_s / 2, 2 * spacing_s)
    runs: list[list[float]] = [[probes_s[0]]]
    for offset_s in probes_s[1:]:
        if offset_s - runs[-1][-1] > max_gap_s:
            runs.append([])
        runs[-1].append(offset_s)
    valid = []
    for run in runs:
        in_span = int(np.count_nonzero((all_probes_s >= run[0]) & (all_probes_s <= run[-1])))
        long_enough = run[-1] + spacing_s - run[0] >= params.min_shared_s
        if len(run) >= 2 and long_enough and len(run) >= params.min_density * in_span:
            valid.append((run[0], run[-1], in_span))
    return valid


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
