"""Verification: score a candidate against the catalog windows at its alignment, not only its hits.

Voting sees a catalog window only when it is among a query window's ``top_k`` nearest.  In a
catalog of thousands of tracks a noisy query window's true neighbour is often pushed out of that
short list by chance neighbours from other tracks, so a true match collects fewer time-consistent
hits the larger the catalog (docs/scaling.md: under interfering music, 8-9 aligned windows at 30
tracks fell to 2-5 at 20,000).  Once voting has proposed a (track, alignment), the windows it
implies are known: this stage reads them (``Catalog.references``) and compares every query window
with the catalog window at its aligned position directly, so the evidence no longer depends on
what else the catalog holds.

A query window counts only when its aligned similarity reaches ``min_similarity``: unrelated
music reaches it rarely at a given alignment, while a true match under interference mostly does
(docs/scaling.md, "Verification"), and what the same query scores at alignments shifted by a few
seconds is subtracted as chance.  Rivals are verified the same way, so ``decisive``'s margin
still compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tunetrace.store.base import Reference, TrackSpan
from tunetrace.voting.vote import Candidate, VotingParams

CHANCE_SHIFTS_S = (-10.0, -7.5, -5.0, -2.5, 2.5, 5.0, 7.5, 10.0)
"""Alignments beside a candidate's at which the same query is verified too: what the query scores
against this track where it does *not* play. Music with a generic texture (a held pad, a steady
groove) resembles a catalog window at any alignment, and only this comparison tells that apart
from a match (2,000 tracks, without it: a hold-out blues answered at 0.74 with every window
"confirmed"). Multiples of the catalog hop, so every shift reads the same window grid."""


CHANCE_RANK = 2
"""Chance is the ``CHANCE_RANK``-th highest of the shifted alignments' evidence: nearly the most a
shifted alignment scores (the median let a generic texture through: 2 and 3 of 600 hold-out
excerpts at 2,000 and 20,000 tracks), while one shift landing on a repeat of looped music does
not cancel a true match."""


def reference_span(candidate: Candidate, query_times_s: np.ndarray, params: VotingParams) -> TrackSpan:
    """The catalog windows a candidate's alignment, and the chance shifts beside it, imply."""
    slack = params.offset_tolerance_s
    return TrackSpan(
        candidate.track_id,
        candidate.alignment_s + float(np.min(query_times_s)) + min(CHANCE_SHIFTS_S) - slack,
        candidate.alignment_s + float(np.max(query_times_s)) + max(CHANCE_SHIFTS_S) + slack,
    )


def verified(
    candidate: Candidate, query_vectors: np.ndarray, query_times_s: np.ndarray, reference: Reference,
    params: VotingParams, min_similarity: float,
) -> Candidate:
    """``candidate`` scored on every aligned window, less what the same query scores at the
    shifted alignments (``CHANCE_RANK``); never below its score from hits alone.

    Each catalog window is confirmed at most once, by its most similar aligned query window, as
    in ``vote``; confidence is the similarity-weighted share of the spanned catalog windows so
    confirmed, in excess of chance, on the scale ``vote`` uses.
    """
    if reference.vectors.shape[0] == 0 or query_vectors.shape[0] == 0:
        return candidate
    similarity = query_vectors @ reference.vectors.T

    def at(shift_s: float) -> tuple[float, int, frozenset[int]]:
        expected_s = candidate.alignment_s + shift_s + query_times_s
        return _aligned_evidence(similarity, reference.offsets_s, expected_s, params, min_similarity)

    evidence, windows, supporting = at(0.0)
    chance_levels = sorted(at(shift)[0] for shift in CHANCE_SHIFTS_S)
    chance = chance_levels[-CHANCE_RANK]
    span_s = float(np.max(query_times_s) - np.min(query_times_s))
    possible = span_s / params.catalog_hop_s + 1.0
    confidence = min(1.0, max(0.0, evidence - chance) / max(1.0, possible - chance))
    if confidence <= candidate.confidence:
        return candidate
    return replace(
        candidate, confidence=confidence, aligned_windows=windows, supporting_windows=supporting,
    )


def _aligned_evidence(
    similarity: np.ndarray, offsets_s: np.ndarray, expected_s: np.ndarray, params: VotingParams,
    min_similarity: float,
) -> tuple[float, int, frozenset[int]]:
    """Similarity-weighted catalog windows confirmed where query window ``i`` is expected at
    ``expected_s[i]``; the windows confirmed and the query windows that confirmed them."""
    near = np.abs(offsets_s[None, :] - expected_s[:, None]) <= params.offset_tolerance_s + 1e-9
    aligned = np.where(near, similarity, -np.inf)
    chosen = np.argmax(aligned, axis=1)
    best = aligned[np.arange(aligned.shape[0]), chosen]
    counted = np.flatnonzero(best >= min_similarity)
    per_window = np.zeros(offsets_s.size)
    np.maximum.at(per_window, chosen[counted], np.clip(best[counted], 0.0, 1.0))
    return float(per_window.sum()), int(np.count_nonzero(per_window)), frozenset(counted.tolist())


def verify_all(
    ranked: Sequence[Candidate], references: Sequence[Reference], query_vectors: np.ndarray,
    query_times_s: np.ndarray, params: VotingParams, min_similarity: float,
) -> list[Candidate]:
    """The first ``len(references)`` candidates verified (the rest as voted), best first again."""
    checked = [
        verified(c, query_vectors, query_times_s, r, params, min_similarity)
        for c, r in zip(ranked, references, strict=False)
    ]
    rescored = checked + list(ranked[len(checked):])
    return sorted(rescored, key=lambda c: (c.confidence, c.aligned_windows), reverse=True)
