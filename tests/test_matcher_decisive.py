"""How clearly a winner beats the other tracks decides "match" or "no match"."""

from __future__ import annotations

from tunetrace.voting.vote import FULL_EVIDENCE_WINDOWS, Candidate, decisive

HOP_S = 0.5
FULL_SPAN_S = (FULL_EVIDENCE_WINDOWS - 1) * HOP_S


def _candidate(track_id: int, confidence: float, windows: range) -> Candidate:
    return Candidate(
        track_id, 10.0, confidence, len(windows), 100, supporting_windows=frozenset(windows)
    )


def test_rival_on_other_windows_lowers_confidence_by_its_evidence() -> None:
    winner = _candidate(1, 0.8, range(0, 60))
    chance_rival = _candidate(2, 0.3, range(60, 80))
    result = decisive([winner, chance_rival], FULL_SPAN_S, HOP_S)
    assert result is not None and result.track_id == 1
    assert abs(result.confidence - 0.5) < 1e-9


def test_duplicate_recording_on_the_same_windows_is_explained_away() -> None:
    winner = _candidate(1, 0.8, range(0, 60))
    remaster = _candidate(2, 0.78, range(0, 60))
    result = decisive([winner, remaster], FULL_SPAN_S, HOP_S)
    assert result is not None and abs(result.confidence - 0.8) < 1e-9


def test_repeat_inside_the_winning_track_does_not_count_against_it() -> None:
    winner = _candidate(1, 0.7, range(0, 40))
    same_track_repeat = Candidate(1, 95.0, 0.6, 30, 100, supporting_windows=frozenset(range(50, 80)))
    result = decisive([winner, same_track_repeat], FULL_SPAN_S, HOP_S)
    assert result is not None and abs(result.confidence - 0.7) < 1e-9


def test_short_query_is_discounted_in_proportion_to_its_span() -> None:
    winner = _candidate(1, 0.8, range(0, 20))
    short_span_s = 2 * HOP_S  # three catalog windows
    result = decisive([winner], short_span_s, HOP_S)
    assert result is not None
    assert abs(result.confidence - 0.8 * 3 / FULL_EVIDENCE_WINDOWS) < 1e-9


def test_no_candidates_means_no_winner() -> None:
    assert decisive([], FULL_SPAN_S, HOP_S) is None


def test_duplicate_encoded_off_grid_is_still_explained_away() -> None:
    winner = _candidate(1, 0.9, range(0, 60, 3))
    other_encode = _candidate(2, 0.85, range(1, 60, 3))  # same moments, one query window later
    result = decisive([winner, other_encode], FULL_SPAN_S, HOP_S)
    assert result is not None and abs(result.confidence - 0.9) < 1e-9


def test_weak_rival_on_the_same_windows_is_chance_not_a_duplicate() -> None:
    winner = _candidate(1, 0.3, range(0, 10))
    weak_rival = _candidate(2, 0.25, range(0, 10))
    result = decisive([winner, weak_rival], FULL_SPAN_S, HOP_S)
    assert result is not None and abs(result.confidence - 0.05) < 1e-9
