"""Time-consistent voting: turn nearest-neighbour hits into a track, a position and a confidence.

For a true match the matched catalog offset minus the query offset stays constant (the
*alignment*), while chance neighbours scatter over every alignment.  So each query window votes
for (track, alignment) with its best hit per track, only windows whose alignment agrees with the
winner's within a tolerance count, and the count is corrected for how many such agreements a
track of that length would collect by chance, so long tracks do not win on size alone.

``vote`` is a pure function over a batch of hits, used both by one-shot identification and by
the live daemon over its sliding horizon.  ``decisive`` then asks how clearly the winner beats the
best *other* track: chance alignments are the maximum over every track and every alignment, so
their level is measured on the query itself instead of modelled, which makes one threshold work
for 3 s and 10 s queries alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tunetrace.config import MatcherConfig
from tunetrace.store.base import CatalogShape, Hit


@dataclass(frozen=True)
class Candidate:
    """The best time-consistent explanation of a set of query windows."""

    track_id: int
    alignment_s: float
    """Catalog offset minus query time: the track position at query time 0."""
    confidence: float
    """In [0, 1]: chance-corrected share of query windows agreeing in time, weighted by similarity."""
    aligned_windows: int
    """Distinct catalog windows confirmed by a time-consistent hit."""
    query_windows: int
    speed_ratio: float = 1.0
    supporting_windows: frozenset[int] = field(default=frozenset(), compare=False, repr=False)
    """Query windows whose hits agree with this alignment (used to explain evidence away)."""


@dataclass(frozen=True)
class VotingParams:
    catalog_hop_s: float
    top_k: int
    offset_tolerance_s: float
    min_similarity: float

    @classmethod
    def from_config(cls, config: MatcherConfig, catalog_hop_s: float) -> VotingParams:
        return cls(catalog_hop_s, config.top_k, config.offset_tolerance_s, config.min_similarity)


def vote(
    hits: Sequence[Sequence[Hit]],
    query_times_s: np.ndarray,
    params: VotingParams,
    catalog: CatalogShape,
    max_candidates: int = 3,
) -> list[Candidate]:
    """Rank tracks by time-consistent evidence; ``hits[i]`` are the neighbours of window ``i``.

    ``query_times_s[i]`` is window ``i``'s start time on the query's (or stream's) clock.
    """
    n_windows = len(hits)
    if n_windows == 0:
        return []
    # Track ids are int64: keep them out of the float array, which holds a dense index instead.
    track_index: dict[int, int] = {}
    rows: list[tuple[int, int, float, float, float]] = []  # window, track idx, alignment, sim, time
    for window, window_hits in enumerate(hits):
        best_per_track: dict[tuple[int, int], float] = {}
        for hit in window_hits:
            if hit.similarity < params.min_similarity:
                continue
            alignment = hit.offset_s - float(query_times_s[window])
            key = (hit.track_id, round(alignment / params.catalog_hop_s))
            if hit.similarity > best_per_track.get(key, -np.inf):
                best_per_track[key] = hit.similarity
                index = track_index.setdefault(hit.track_id, len(track_index))
                rows.append((window, index, alignment, hit.similarity, float(query_times_s[window])))
    if not rows:
        return []
    data = np.array(rows, dtype=np.float64)
    data = data[np.argsort(data[:, 1], kind="stable")]
    per_track = np.split(data, np.flatnonzero(np.diff(data[:, 1])) + 1)
    span_s = float(np.max(query_times_s) - np.min(query_times_s))
    tracks = list(track_index)
    candidates = [
        _best_alignment(track_rows, tracks[int(track_rows[0, 1])], n_windows, span_s, params, catalog)
        for track_rows in per_track
    ]
    candidates.sort(key=lambda c: (c.confidence, c.aligned_windows), reverse=True)
    return candidates[:max_candidates]


FULL_EVIDENCE_WINDOWS = 9
"""Catalog windows a query must span (5 s at 1 s windows and 0.5 s hop) for full confidence;
shorter queries are discounted in proportion, since a few chance agreements weigh more there."""


def decisive(ranked: Sequence[Candidate], span_s: float, catalog_hop_s: float) -> Candidate | None:
    """The winner with its confidence replaced by its margin over the best other track.

    Evidence another track collects from query windows the winner does *not* explain is what
    chance produces for this query, so only the winner's excess over it counts.  Evidence from the
    same windows is explained away: that is a duplicate recording in the catalog (a remaster, an
    album and a single version), not a competing answer.  Repeats inside the winning track never
    count against it.
    """
    if not ranked:
        return None
    best = ranked[0]
    runner_up = max(
        (_unexplained(c, best) for c in ranked[1:] if c.track_id != best.track_id), default=0.0
    )
    spanned = span_s / catalog_hop_s + 1.0
    margin = max(0.0, best.confidence - runner_up) * min(1.0, spanned / FULL_EVIDENCE_WINDOWS)
    return Candidate(
        best.track_id, best.alignment_s, margin, best.aligned_windows, best.query_windows,
        best.speed_ratio,
    )


DUPLICATE_OVERLAP = 0.7
"""Share of a rival's supporting windows that the winner also explains, from which the rival is
taken for a duplicate recording rather than chance (chance rivals share few windows)."""


NEIGHBOURING_WINDOWS = 2
"""A rival window this close to a winner's window counts as the same moment: two encodes of one
recording are rarely sample-aligned, so their best-matching query windows differ by a window or two."""


DUPLICATE_MIN_CONFIDENCE = 0.5
"""Only a rival that is itself a confident match can be a duplicate recording; chance rivals on
unknown music stay far below this (at most 0.34 in the calibration data)."""


def _unexplained(rival: Candidate, winner: Candidate) -> float:
    if not rival.supporting_windows or rival.confidence < DUPLICATE_MIN_CONFIDENCE:
        return rival.confidence
    near_winner = {
        w + shift
        for w in winner.supporting_windows
        for shift in range(-NEIGHBOURING_WINDOWS, NEIGHBOURING_WINDOWS + 1)
    }
    shared = len(rival.supporting_windows & near_winner) / len(rival.supporting_windows)
    return rival.confidence * (1.0 - shared) if shared >= DUPLICATE_OVERLAP else rival.confidence


def _best_alignment(
    track_rows: np.ndarray, track_id: int, n_windows: int, span_s: float, params: VotingParams,
    catalog: CatalogShape,
) -> Candidate:
    """Evidence is counted per *catalog* window, so it does not depend on the query hop.

    For each candidate alignment, every catalog window the query spans can be confirmed once, by
    the most similar query window whose hit agrees in time; confidence is the chance-corrected
    share of the spanned catalog windows that were confirmed, weighted by similarity.
    """
    alignments, similarities = track_rows[:, 2], track_rows[:, 3]
    catalog_index = np.round((alignments + track_rows[:, 4]) / params.catalog_hop_s).astype(np.int64)
    possible = span_s / params.catalog_hop_s + 1.0
    centres = np.unique(np.round(alignments / params.catalog_hop_s)) * params.catalog_hop_s
    # All centres at once (this runs for every track of every live decision): pairs of (centre,
    # row) within the tolerance, best similarity per (centre, catalog window), summed per centre.
    near = np.abs(alignments[None, :] - centres[:, None]) <= params.offset_tolerance_s + 1e-9
    pair_centre, pair_row = np.nonzero(near)
    pair_window = catalog_index[pair_row]
    order = np.lexsort((-similarities[pair_row], pair_window, pair_centre))
    pair_centre, pair_window, pair_row = pair_centre[order], pair_window[order], pair_row[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (pair_centre[1:] != pair_centre[:-1]) | (pair_window[1:] != pair_window[:-1])
    evidence_per_centre = np.bincount(
        pair_centre[first], weights=np.clip(similarities[pair_row[first]], 0.0, 1.0), minlength=centres.size
    )
    winner = int(np.argmax(evidence_per_centre))  # the first centre on ties
    winner_rows = near[winner]
    evidence = float(evidence_per_centre[winner])
    alignment = float(np.median(alignments[winner_rows]))
    confirmed = int(np.count_nonzero(first & (pair_centre == winner)))
    supporting = frozenset(track_rows[winner_rows, 0].astype(np.int64).tolist())
    chance = min(possible, _chance_agreements(track_id, n_windows, params, catalog))
    confidence = max(0.0, evidence - chance) / max(1.0, possible - chance)
    return Candidate(
        track_id, alignment, float(min(1.0, confidence)), confirmed, n_windows, 1.0, supporting
    )


def _chance_agreements(track_id: int, n_windows: int, params: VotingParams, catalog: CatalogShape) -> float:
    """Expected windows agreeing with one alignment by chance for a track of this size.

    A random neighbour lands on this track with probability ``track_vectors / total_vectors``; each
    window draws ``top_k`` of them, and one lands in the tolerance band of a given alignment with
    probability (band width / track span).  Summed over windows this is what noise alone buys.
    """
    track_vectors = catalog.track_vectors.get(track_id, 0)
    if catalog.total_vectors <= 0 or track_vectors <= 0:
        return 0.0
    p_track = min(1.0, params.top_k * track_vectors / catalog.total_vectors)
    span_s = max(params.catalog_hop_s, track_vectors * params.catalog_hop_s)
    p_band = min(1.0, (2 * params.offset_tolerance_s + params.catalog_hop_s) / span_s)
    return n_windows * p_track * p_band
