"""Verification of voted candidates against the catalog windows their alignment implies.

The catalog is built the way a large one behaves for a noisy query: the true track holds the
query's windows (similarity ~0.7 after the noise), while many other tracks hold windows that
happen to be closer to each query window than the true one is, so a short ``top_k`` list is
crowded by them and voting sees the true track in only a few windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.fakes import fake_track
from tunetrace.config import MatcherConfig
from tunetrace.store import Track, TrackSpan, catalog_shape
from tunetrace.store.memory import MemoryCatalog
from tunetrace.voting import Candidate, VotingParams, decisive, vote
from tunetrace.voting.verify import reference_span, verified, verify_all

DIMENSION = 64
HOP_S = 0.5
TOP_K = 3
FLOOR = MatcherConfig().verify_min_similarity
PARAMS = VotingParams(catalog_hop_s=HOP_S, top_k=TOP_K, offset_tolerance_s=0.3, min_similarity=-1.0)
TRUE_TRACK, TRACK_WINDOWS, POSITION_S = 1, 120, 20.0
QUERY_TIMES_S = np.arange(10) * HOP_S
"""Ten query windows, one per catalog hop: a 5 s query at ``POSITION_S`` of the true track."""


def unit(vectors: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)
    return normalised


def blend(towards: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors whose inner product with each row of ``towards`` is ``similarity``."""
    noise = rng.standard_normal(towards.shape)
    noise -= np.sum(noise * towards, axis=1, keepdims=True) * towards  # orthogonal to ``towards``
    return unit(similarity * towards + np.sqrt(1.0 - similarity**2) * unit(noise))


def track(track_id: int) -> Track:
    return fake_track(track_id, f"track {track_id}", TRACK_WINDOWS, TRACK_WINDOWS * HOP_S)


@pytest.fixture(scope="module")
def crowded() -> tuple[MemoryCatalog, np.ndarray]:
    """The catalog and the query's vectors: crowded out of the top 3 in 7 of its 10 windows."""
    rng = np.random.default_rng(5)
    catalog = MemoryCatalog()
    true_vectors = unit(rng.standard_normal((TRACK_WINDOWS, DIMENSION)))
    offsets = np.arange(TRACK_WINDOWS) * HOP_S
    catalog.add_track(track(TRUE_TRACK), true_vectors, offsets)
    first = round(POSITION_S / HOP_S)
    query = blend(true_vectors[first : first + QUERY_TIMES_S.size], 0.7, rng)
    crowded_windows = [0, 1, 2, 4, 5, 7, 8]
    for n in range(TOP_K * len(crowded_windows)):
        # Each crowded window gets TOP_K chance neighbours closer than the true one, each in a
        # different track at a random place (as chance neighbours in a large catalog are).
        window = crowded_windows[n % len(crowded_windows)]
        vectors = unit(rng.standard_normal((TRACK_WINDOWS, DIMENSION)))
        place = int(rng.integers(0, TRACK_WINDOWS))
        vectors[place] = blend(query[window : window + 1], 0.85, rng)[0]
        catalog.add_track(track(100 + n), vectors, offsets)
    return catalog, query


def voted(catalog: MemoryCatalog, query: np.ndarray) -> list[Candidate]:
    hits = catalog.search(query, TOP_K)
    return vote(hits, QUERY_TIMES_S, PARAMS, catalog_shape(catalog.tracks()), max_candidates=8)


def test_verification_restores_the_windows_a_crowded_top_k_pushed_out(
    crowded: tuple[MemoryCatalog, np.ndarray],
) -> None:
    catalog, query = crowded
    ranked = voted(catalog, query)
    true = next(c for c in ranked if c.track_id == TRUE_TRACK)
    assert true.aligned_windows == 3  # only the three windows nobody crowded
    assert true.alignment_s == pytest.approx(POSITION_S, abs=PARAMS.offset_tolerance_s)

    reference = catalog.references([reference_span(true, QUERY_TIMES_S, PARAMS)])[0]
    checked = verified(true, query, QUERY_TIMES_S, reference, PARAMS, FLOOR)

    assert checked.aligned_windows == QUERY_TIMES_S.size
    assert checked.confidence == pytest.approx(0.7, abs=0.02)  # every window at its similarity
    assert checked.supporting_windows == frozenset(range(QUERY_TIMES_S.size))
    assert checked.track_id == true.track_id and checked.alignment_s == true.alignment_s


def test_the_verified_winner_beats_chance_rivals_that_outvoted_it(
    crowded: tuple[MemoryCatalog, np.ndarray],
) -> None:
    catalog, query = crowded
    ranked = voted(catalog, query)
    count = 6
    references = catalog.references([reference_span(c, QUERY_TIMES_S, PARAMS) for c in ranked[:count]])

    rescored = verify_all(ranked, references, query, QUERY_TIMES_S, PARAMS, FLOOR)

    winner = decisive(rescored, float(QUERY_TIMES_S[-1]), HOP_S)
    assert winner is not None and winner.track_id == TRUE_TRACK
    before = decisive(ranked, float(QUERY_TIMES_S[-1]), HOP_S)
    assert before is not None and winner.confidence > before.confidence + 0.3
    # A chance rival holds one close window: verified, it is worth that window and no more.
    assert max(c.confidence for c in rescored if c.track_id != TRUE_TRACK) <= 0.9 / QUERY_TIMES_S.size


def test_a_wrong_alignment_gains_nothing(crowded: tuple[MemoryCatalog, np.ndarray]) -> None:
    catalog, query = crowded
    wrong = Candidate(TRUE_TRACK, POSITION_S + 17.0, 0.05, 1, QUERY_TIMES_S.size)
    reference = catalog.references([reference_span(wrong, QUERY_TIMES_S, PARAMS)])[0]
    assert reference.offsets_s.size > 0

    assert verified(wrong, query, QUERY_TIMES_S, reference, PARAMS, FLOOR) == wrong


def test_verification_never_lowers_a_candidate(crowded: tuple[MemoryCatalog, np.ndarray]) -> None:
    catalog, query = crowded
    strong = Candidate(TRUE_TRACK, POSITION_S, 0.95, 10, QUERY_TIMES_S.size)
    reference = catalog.references([reference_span(strong, QUERY_TIMES_S, PARAMS)])[0]

    assert verified(strong, query, QUERY_TIMES_S, reference, PARAMS, FLOOR) == strong


def test_a_span_outside_the_stored_windows_leaves_the_candidate_as_voted(
    crowded: tuple[MemoryCatalog, np.ndarray],
) -> None:
    catalog, query = crowded
    candidate = Candidate(TRUE_TRACK, 500.0, 0.1, 3, QUERY_TIMES_S.size)
    reference = catalog.references([TrackSpan(TRUE_TRACK, 500.0, 505.0)])[0]
    assert reference.offsets_s.size == 0

    assert verified(candidate, query, QUERY_TIMES_S, reference, PARAMS, FLOOR) == candidate


def test_music_that_resembles_the_query_everywhere_is_not_confirmed_by_verification() -> None:
    """A held pad or a steady groove: every window of the track is close to every query window,
    at the candidate's alignment as much as seconds away from it, so nothing there is a match."""
    rng = np.random.default_rng(9)
    texture = unit(rng.standard_normal((1, DIMENSION)))
    drone = blend(np.repeat(texture, TRACK_WINDOWS, axis=0), 0.85, rng)
    catalog = MemoryCatalog()
    catalog.add_track(track(TRUE_TRACK), drone, np.arange(TRACK_WINDOWS) * HOP_S)
    query = blend(np.repeat(texture, QUERY_TIMES_S.size, axis=0), 0.85, rng)
    voted_there = Candidate(TRUE_TRACK, POSITION_S, 0.05, 3, QUERY_TIMES_S.size)
    reference = catalog.references([reference_span(voted_there, QUERY_TIMES_S, PARAMS)])[0]
    assert float(np.min(query @ reference.vectors.T)) > FLOOR  # every pair would "confirm"

    assert verified(voted_there, query, QUERY_TIMES_S, reference, PARAMS, FLOOR) == voted_there
