"""Time-consistent voting on hand-made hits: what counts as evidence, and what chance buys.

Hits are built the way a catalog returns them: a true match lands on the catalog window nearest to
``position + query time`` (the catalog is indexed every ``HOP_S``); chance neighbours land on a
track in proportion to its size, at any offset.
"""

from __future__ import annotations

import numpy as np
import pytest

from tunetrace.config import MatcherConfig
from tunetrace.store import CatalogShape, Hit
from tunetrace.voting.vote import VotingParams, _chance_agreements, vote

HOP_S = 0.5
WINDOW_S = 1.0
PARAMS = VotingParams.from_config(MatcherConfig(), catalog_hop_s=HOP_S)
MIN_CONFIDENCE = MatcherConfig().min_confidence

TRUE_TRACK = 7_000_000_000_000_000_001  # any int64 id must survive the voting unchanged
LONG_TRACK = 42


def query_times(duration_s: float = 10.0, hop_s: float = 0.05) -> np.ndarray:
    """Start times of the query windows that fit in ``duration_s`` of audio."""
    return np.arange(0.0, duration_s - WINDOW_S + 1e-9, hop_s)


def aligned_hit(window: int, time_s: float, track_id: int, position_s: float, similarity: float) -> Hit:
    """The catalog window nearest to where the query window really is in the track."""
    offset_s = round((position_s + time_s) / HOP_S) * HOP_S
    return Hit(window, track_id, offset_s, similarity)


def chance_hits(
    times_s: np.ndarray, shape: CatalogShape, rng: np.random.Generator, per_window: int,
    similarity: tuple[float, float] = (0.3, 0.6),
) -> list[list[Hit]]:
    """Neighbours of unrelated audio: a track in proportion to its vectors, anywhere in it."""
    ids = np.array(list(shape.track_vectors))
    sizes = np.array([shape.track_vectors[i] for i in ids], dtype=np.float64)
    hits: list[list[Hit]] = []
    for window in range(times_s.size):
        picks = rng.choice(ids.size, size=per_window, p=sizes / sizes.sum())
        hits.append([
            Hit(window, int(ids[p]), float(rng.integers(0, sizes[p])) * HOP_S, rng.uniform(*similarity))
            for p in picks
        ])
    return hits


def shape_of(sizes: dict[int, int]) -> CatalogShape:
    return CatalogShape(total_vectors=sum(sizes.values()), track_vectors=sizes)


CATALOG = shape_of({TRUE_TRACK: 400, **{1000 + i: 300 + 20 * i for i in range(30)}})


@pytest.mark.parametrize("position_s", [0.0, 37.23, 101.77, 150.4])
def test_the_position_is_recovered_between_catalog_windows(position_s: float) -> None:
    rng = np.random.default_rng(1)
    times = query_times()
    hits = chance_hits(times, CATALOG, rng, per_window=9)
    for window, time_s in enumerate(times):
        hits[window].insert(0, aligned_hit(window, time_s, TRUE_TRACK, position_s, 0.9))

    best = vote(hits, times, PARAMS, CATALOG)[0]

    assert best.track_id == TRUE_TRACK
    assert best.alignment_s == pytest.approx(position_s, abs=HOP_S / 2)
    assert best.confidence > 0.8
    assert best.aligned_windows == pytest.approx(times[-1] / HOP_S + 1, abs=1)
    assert best.query_windows == times.size


def test_hits_that_disagree_in_time_do_not_add_up() -> None:
    rng = np.random.default_rng(2)
    times = query_times()
    consistent = [[aligned_hit(w, t, TRUE_TRACK, 60.0, 0.95)] for w, t in enumerate(times)]
    scattered = [[Hit(w, TRUE_TRACK, float(rng.integers(0, 400)) * HOP_S, 0.95)] for w in range(times.size)]

    agreeing = vote(consistent, times, PARAMS, CATALOG)[0]
    disagreeing = vote(scattered, times, PARAMS, CATALOG)[0]

    assert agreeing.confidence > 0.9
    # Same track, same similarities, as many hits: without agreement in time they are not evidence.
    assert disagreeing.confidence < 0.15
    assert disagreeing.confidence < MIN_CONFIDENCE
    assert disagreeing.aligned_windows <= 4


def test_a_long_track_does_not_win_on_chance_neighbours() -> None:
    """A two-hour recording draws most random neighbours, but never in a time-consistent line."""
    rng = np.random.default_rng(3)
    sizes = {TRUE_TRACK: 400, LONG_TRACK: 14_400, **{1000 + i: 400 for i in range(10)}}
    shape = shape_of(sizes)
    times = query_times()
    hits = chance_hits(times, shape, rng, per_window=10)

    noise_only = vote(hits, times, PARAMS, shape, max_candidates=20)
    assert all(c.confidence < MIN_CONFIDENCE for c in noise_only)
    long_track = next(c for c in noise_only if c.track_id == LONG_TRACK)
    # Its best line by chance is ~3 catalog windows of 19 (the maximum over ~14k alignments): well
    # under the threshold, though the most of any noise candidate.
    assert long_track.confidence < 0.15

    # A real but weaker match on a short track, in under half the windows, still wins.
    for window, time_s in enumerate(times):
        if window % 5 < 2:
            hits[window].append(aligned_hit(window, time_s, TRUE_TRACK, 12.0, 0.6))
    ranked = vote(hits, times, PARAMS, shape)
    assert ranked[0].track_id == TRUE_TRACK
    assert ranked[0].alignment_s == pytest.approx(12.0, abs=HOP_S / 2)
    assert ranked[0].confidence >= MIN_CONFIDENCE


def test_a_track_short_enough_to_agree_everywhere_is_corrected_for_chance() -> None:
    """A 2-window jingle that draws every neighbour agrees with any alignment about as often."""
    jingle = 5
    shape = shape_of({jingle: 2, LONG_TRACK: 2})
    times = query_times()
    rng = np.random.default_rng(4)
    hits = [[Hit(w, jingle, float(rng.integers(0, 2)) * HOP_S, 0.9)] for w in range(times.size)]
    best = vote(hits, times, PARAMS, shape)[0]
    assert best.track_id == jingle
    assert best.confidence < MIN_CONFIDENCE


def test_evidence_does_not_depend_on_the_query_hop() -> None:
    confidences = []
    for hop_s in (0.05, 0.1, 0.25, 0.5):
        times = query_times(hop_s=hop_s)
        hits = [[aligned_hit(w, t, TRUE_TRACK, 20.3, 0.8)] for w, t in enumerate(times)]
        confidences.append(vote(hits, times, PARAMS, CATALOG)[0].confidence)
    assert max(confidences) - min(confidences) < 0.05


def test_candidates_are_ranked_and_capped() -> None:
    times = query_times()
    hits: list[list[Hit]] = [[] for _ in times]
    for window, time_s in enumerate(times):
        for rank, track in enumerate((1000, 1001, 1002, 1003)):
            if window % 4 >= rank:  # track 1000 in every window, 1003 in a quarter of them
                hits[window].append(aligned_hit(window, time_s, track, 30.0 + rank, 0.9))
    ranked = vote(hits, times, PARAMS, CATALOG, max_candidates=3)
    assert [c.track_id for c in ranked] == [1000, 1001, 1002]
    confidences = [c.confidence for c in ranked]
    assert confidences == sorted(confidences, reverse=True)
    assert all(c.speed_ratio == 1.0 for c in ranked)


def test_nothing_to_vote_on_gives_no_candidates() -> None:
    times = query_times()
    assert vote([], np.zeros(0), PARAMS, CATALOG) == []
    assert vote([[] for _ in times], times, PARAMS, CATALOG) == []
    strict = VotingParams(HOP_S, top_k=10, offset_tolerance_s=0.3, min_similarity=0.5)
    weak = [[aligned_hit(w, t, TRUE_TRACK, 5.0, 0.4)] for w, t in enumerate(times)]
    assert vote(weak, times, strict, CATALOG) == []


def _reference_best_alignment(rows: np.ndarray, params: VotingParams) -> tuple[float, float, int, set[int]]:
    """The alignment search written plainly, one centre at a time: (evidence, alignment,
    confirmed catalog windows, supporting query windows) of the best centre."""
    alignments, similarities = rows[:, 2], rows[:, 3]
    catalog_index = np.round((alignments + rows[:, 4]) / params.catalog_hop_s).astype(np.int64)
    best: tuple[float, float, int, set[int]] = (-1.0, 0.0, 0, set())
    for centre in np.unique(np.round(alignments / params.catalog_hop_s)) * params.catalog_hop_s:
        near = np.abs(alignments - centre) <= params.offset_tolerance_s + 1e-9
        per_window: dict[int, float] = {}
        for window, similarity in zip(catalog_index[near], similarities[near], strict=True):
            per_window[int(window)] = max(per_window.get(int(window), -np.inf), float(similarity))
        evidence = sum(min(1.0, max(0.0, s)) for s in per_window.values())
        if evidence > best[0] + 1e-9:
            best = (evidence, float(np.median(alignments[near])), len(per_window),
                    {int(w) for w in rows[near, 0]})
    return best


@pytest.mark.parametrize("seed", range(20))
def test_the_vectorised_alignment_search_matches_the_plain_one(seed: int) -> None:
    """``vote`` scores all alignments of a track at once; it must agree with the plain loop on
    random mixtures of a true match and chance hits."""
    rng = np.random.default_rng(seed)
    times = query_times(duration_s=float(rng.uniform(3, 10)))
    shape = CatalogShape(4000, {TRUE_TRACK: 400, LONG_TRACK: 3600})
    hits = chance_hits(times, shape, rng, per_window=int(rng.integers(1, 10)))
    position_s = float(rng.uniform(0, 150))
    for window, t in enumerate(times):
        if rng.random() < 0.6:
            similarity = float(rng.uniform(0.2, 1.0))
            hits[window].append(aligned_hit(window, float(t), TRUE_TRACK, position_s, similarity))
    hits = [sorted(window_hits, key=lambda h: -h.similarity) for window_hits in hits]  # as Milvus orders them

    candidates = vote(hits, times, PARAMS, shape, max_candidates=5)

    assert {c.track_id for c in candidates} == {TRUE_TRACK, LONG_TRACK}
    span_s = float(times[-1] - times[0])
    possible = span_s / HOP_S + 1.0
    for candidate in candidates:
        evidence, alignment, confirmed, supporting = _reference_best_alignment(
            _best_hit_per_band(hits, times, candidate.track_id), PARAMS
        )
        chance = min(possible, _chance_agreements(candidate.track_id, times.size, PARAMS, shape))
        expected = min(1.0, max(0.0, evidence - chance) / max(1.0, possible - chance))
        assert candidate.confidence == pytest.approx(expected)
        assert candidate.alignment_s == pytest.approx(alignment)
        assert candidate.aligned_windows == confirmed
        assert set(candidate.supporting_windows) == supporting


def _best_hit_per_band(hits: list[list[Hit]], times: np.ndarray, track_id: int) -> np.ndarray:
    """Rows (window, -, alignment, similarity, time) of each window's best hit per alignment band."""
    rows, seen = [], set()
    for window, window_hits in enumerate(hits):
        for hit in window_hits:
            alignment = hit.offset_s - float(times[window])
            key = (window, round(alignment / HOP_S))
            if hit.track_id == track_id and key not in seen:
                seen.add(key)
                rows.append((window, 0, alignment, hit.similarity, float(times[window])))
    return np.array(rows)
