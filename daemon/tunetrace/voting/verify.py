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
(docs/scaling.md, "Verification").  Rivals are verified the same way, so ``decisive``'s margin
still compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tunetrace.store.base import Reference, TrackSpan
from tunetrace.voting.vote import Candidate, VotingParams


def reference_span(candidate: Candidate, query_times_s: np.ndarray, params: VotingParams) -> TrackSpan:
    """The catalog windows a candidate's alignment implies for these query windows."""
    slack = params.offset_tolerance_s
    return TrackSpan(
        candidate.track_id,
        candidate.alignment_s + float(np.min(query_times_s)) - slack,
        candidate.alignment_s + float(np.max(query_times_s)) + slack,
    )


def verified(
    candidate: Candidate, query_vectors: np.ndarray, query_times_s: np.ndarray, reference: Reference,
    params: VotingParams, min_similarity: float,
) -> Candidate:
    """``candidate`` scored on every aligned window; never below its score from hits alone.

    Each catalog window in the span is confirmed at most once, by its most similar aligned query
    window, as in ``vote``; confidence is the similarity-weighted share of the spanned catalog
    windows so confirmed.
    """
    if reference.vectors.shape[0] == 0 or query_vectors.shape[0] == 0:
        return candidate
    expected = candidate.alignment_s + query_times_s
    near = np.abs(reference.offsets_s[None, :] - expected[:, None]) <= params.offset_tolerance_s + 1e-9
    similarity = np.where(near, query_vectors @ reference.vectors.T, -np.inf)
    chosen = np.argmax(similarity, axis=1)
    best = similarity[np.arange(similarity.shape[0]), chosen]
    counted = np.flatnonzero(best >= min_similarity)
    if counted.size == 0:
        return candidate
    per_window = np.zeros(reference.vectors.shape[0])
    np.maximum.at(per_window, chosen[counted], np.clip(best[counted], 0.0, 1.0))
    span_s = float(np.max(query_times_s) - np.min(query_times_s))
    possible = span_s / params.catalog_hop_s + 1.0
    confidence = min(1.0, float(per_window.sum()) / possible)
    if confidence <= candidate.confidence:
        return candidate
    return replace(
        candidate, confidence=confidence, aligned_windows=int(np.count_nonzero(per_window)),
        supporting_windows=frozenset(counted.tolist()),
    )


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
