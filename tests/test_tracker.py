"""The play tracker as a pure state machine: stream times in, plays out, no services, no clock."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from tunetrace.config import TrackerConfig
from tunetrace.tracker import (
    TWIN_LEAD_S,
    TWIN_MIN_SHARED_S,
    Evidence,
    Observation,
    PlayEnded,
    PlayReidentified,
    PlayStarted,
    PlayTracker,
    SharedSpan,
    TrackerEvent,
    TrackerParams,
)

HOP_S = 0.25
PARAMS = TrackerParams.from_config(TrackerConfig())
A, B, C = 101, 202, 303


def playing(track_id: int, stream_s: float, alignment_s: float, *, since_s: float,
            confidence: float = 0.9, windows: int = 8) -> Evidence:
    """What voting reports while ``track_id`` has been audible since ``since_s`` (first window start)."""
    return Evidence(track_id, alignment_s, confidence, windows, first_aligned_s=max(since_s, stream_s - 4.0),
                    last_aligned_s=stream_s - 0.5)


def run(
    tracker: PlayTracker, start_s: float, end_s: float, candidates_at: Callable[[float], list[Evidence]],
) -> list[tuple[float, TrackerEvent]]:
    """Feed one observation per hop from ``start_s`` to ``end_s``; ``candidates_at(t)`` gives the evidence."""
    events = []
    steps = round((end_s - start_s) / HOP_S)
    for step in range(steps):
        t = start_s + step * HOP_S
        for event in tracker.observe(Observation(t, tuple(candidates_at(t)))):
            events.append((t, event))
    return events


def kinds(events: list[tuple[float, TrackerEvent]]) -> list[str]:
    names = {PlayStarted: "start", PlayEnded: "end", PlayReidentified: "now"}
    return [f"{names[type(e)]}:{e.play.track_id}" for _, e in events]


def test_a_confirmed_track_starts_once_back_dated_to_its_first_window() -> None:
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        # Track A starts at stream 10 s at position 30 s (alignment 20); voting needs ~1.5 s to see it.
        return [playing(A, t, 20.0, since_s=10.0)] if t >= 11.5 else []

    events = run(tracker, 0.0, 40.0, evidence)

    assert kinds(events) == [f"start:{A}"]
    decided_s, started = events[0]
    assert isinstance(started, PlayStarted)
    assert started.play.started_s == pytest.approx(10.0)
    assert started.position_start_s == pytest.approx(30.0)
    assert decided_s == pytest.approx(11.5 + (PARAMS.start_confirmations - 1) * HOP_S)


def test_start_needs_consecutive_confirmations_at_one_alignment() -> None:
    tracker = PlayTracker(PARAMS)
    # Chance matches: a strong-looking candidate whose alignment wanders never confirms.
    rng = random.Random(3)

    def wandering(t: float) -> list[Evidence]:
        return [playing(rng.choice([A, B]), t, rng.uniform(-100, 100), since_s=t - 2)]

    assert run(tracker, 0.0, 120.0, wandering) == []


def test_unknown_music_with_weak_scattered_evidence_never_plays() -> None:
    tracker = PlayTracker(PARAMS)
    rng = random.Random(7)

    def unknown(t: float) -> list[Evidence]:
        # What unknown music looks like to the voting: low confidence, few aligned windows.
        return [Evidence(rng.choice([A, B]), rng.uniform(0, 300), rng.uniform(0.05, 0.45), rng.randint(1, 3),
                         t - 2, t - 1)]

    assert run(tracker, 0.0, 600.0, unknown) == []


def test_play_ends_after_its_evidence_has_been_gone_for_end_after_s() -> None:
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        return [playing(A, t, 0.0, since_s=0.0)] if 1.5 <= t < 30.0 else []

    events = run(tracker, 0.0, 60.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}"]
    decided_s, ended = events[1]
    assert isinstance(ended, PlayEnded)
    last_support = 30.0 - HOP_S - 0.5
    assert ended.ended_s == pytest.approx(last_support)
    assert ended.position_end_s == pytest.approx(last_support)
    assert decided_s == pytest.approx(last_support + PARAMS.end_after_s, abs=HOP_S)


def test_brief_dropouts_and_low_confidence_passages_do_not_flap() -> None:
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        if t < 2.0:
            return []
        if 20.0 <= t < 24.0:  # a quiet bridge: confidence sags below the start threshold
            return [playing(A, t, 5.0, since_s=2.0, confidence=0.25)]
        if 40.0 <= t < 45.0:  # a 5 s dropout (talk-over), shorter than end_after_s
            return []
        return [playing(A, t, 5.0, since_s=2.0)]

    assert kinds(run(tracker, 0.0, 90.0, evidence)) == [f"start:{A}"]


def test_track_change_publishes_exactly_one_end_and_one_start() -> None:
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        out = []
        if 1.5 <= t < 33.0:  # A from 0 s to 30 s; its evidence lingers in the horizon
            fading = max(0.2, 0.9 - max(0.0, t - 30) * 0.3)
            out.append(playing(A, min(t, 30.5), 0.0, since_s=0.0, confidence=fading))
        if t >= 31.5:  # B from 30 s at position 0
            out.append(playing(B, t, -30.0, since_s=30.0, confidence=min(0.9, 0.3 + (t - 31.0) * 0.3)))
        return sorted(out, key=lambda e: -e.confidence)

    events = run(tracker, 0.0, 60.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}", f"start:{B}"]
    (_, _started_a), (t_end, ended_a), (t_start, started_b) = events
    assert t_end == t_start, "the end and the start are decided together"
    assert isinstance(ended_a, PlayEnded) and isinstance(started_b, PlayStarted)
    assert ended_a.ended_s <= started_b.play.started_s
    assert started_b.play.started_s == pytest.approx(30.0)
    assert started_b.position_start_s == pytest.approx(0.0)


def test_a_duplicate_recording_matching_as_well_does_not_take_over_the_play() -> None:
    """Two catalog entries of one recording (album and single version) trade first place by noise
    alone; the play stays with the first, and ends once, when the music stops."""
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        if not 1.5 <= t < 60.5:
            return []
        wobble = 0.08 if int(t / HOP_S) % 2 else -0.08
        both = [
            playing(A, min(t, 60.0), 0.0, since_s=0.0, confidence=0.6 + wobble),
            playing(B, min(t, 60.0), 0.0, since_s=0.0, confidence=0.6 - wobble),
        ]
        return sorted(both, key=lambda e: -e.confidence)

    events = run(tracker, 0.0, 80.0, evidence)

    assert len(events) == 2, kinds(events)
    assert kinds(events)[1] == f"end:{events[0][1].play.track_id}"


def test_without_a_switch_margin_duplicates_flap() -> None:
    """The margin is what keeps the duplicate play stable (this guards the test above)."""
    tracker = PlayTracker(dataclasses.replace(PARAMS, switch_margin=0.0))

    def evidence(t: float) -> list[Evidence]:
        wobble = 0.1 if int(t / 1.0) % 2 else -0.1  # the lead changes every second
        both = [
            playing(A, t, 0.0, since_s=0.0, confidence=0.6 + wobble),
            playing(B, t, 0.0, since_s=0.0, confidence=0.6 - wobble),
        ]
        return sorted(both, key=lambda e: -e.confidence)

    assert len(run(tracker, 1.5, 20.0, evidence)) > 4


def shared_then_only(
    first: int, second: int, *, shared_until_s: float, second_until_s: float,
) -> Callable[[float], list[Evidence]]:
    """Two catalog tracks holding the same audio from stream 0 (a remaster containing the
    original, alignment 40 s into it): both match, ``first`` a little better, until
    ``shared_until_s``; then only ``second`` does, until ``second_until_s``."""

    def evidence(t: float) -> list[Evidence]:
        heard = []
        if 1.5 <= t < shared_until_s + 0.5:
            heard.append(playing(first, min(t, shared_until_s), 40.0, since_s=0.0, confidence=0.85))
        if 1.5 <= t < second_until_s + 0.5:
            heard.append(playing(second, min(t, second_until_s), 0.0, since_s=0.0, confidence=0.8))
        return heard

    return evidence


def test_a_play_named_after_a_twin_is_reidentified_once_only_the_other_recording_matches() -> None:
    """The remaster (A) wins the start on the audio it shares with the original (B); when the
    shared stretch ends and only B goes on, the play becomes B's: one play, from the start, no
    false play of A and no split."""
    tracker = PlayTracker(PARAMS)

    events = run(tracker, 0.0, 120.0, shared_then_only(A, B, shared_until_s=60.0, second_until_s=100.0))

    assert kinds(events) == [f"start:{A}", f"now:{B}", f"end:{B}"]
    (_, started), (decided_s, now_b), (_, ended) = events
    assert isinstance(now_b, PlayReidentified) and now_b.previous_track_id == A
    assert now_b.offset_s == pytest.approx(-40.0), "a position in A plus this is the moment in B"
    assert now_b.play.started_s == started.play.started_s == pytest.approx(0.0)
    assert now_b.play.position_at(now_b.play.started_s) == pytest.approx(0.0), "B's own position at the start"
    assert 60.0 < decided_s < 60.0 + PARAMS.end_after_s
    assert isinstance(ended, PlayEnded) and ended.reason == "evidence_lost"
    assert ended.ended_s == pytest.approx(100.0 - HOP_S, abs=0.5)


def test_a_twin_matching_at_several_alignments_is_still_one_twin_and_chance_matches_are_none() -> None:
    """Music that repeats itself makes the twin match at more than one alignment in a decision;
    it is one twin (at its best alignment). Another track matching far below the play (chance)
    is never a twin: it takes over as a new play, never by renaming this one."""
    tracker = PlayTracker(PARAMS)
    shared = shared_then_only(A, B, shared_until_s=60.0, second_until_s=100.0)

    def evidence(t: float) -> list[Evidence]:
        heard = shared(t)
        if 1.5 <= t < 60.5:
            heard.append(playing(B, min(t, 60.0), 4.5, since_s=0.0, confidence=0.4))  # a repeat
            heard.append(playing(C, t, -30.0, since_s=0.0, confidence=0.3))  # chance, all along
        if 100.0 <= t < 130.0:
            heard.append(playing(C, t, -30.0, since_s=0.0, confidence=0.8))  # C really airs next
        return sorted(heard, key=lambda e: -e.confidence)

    events = run(tracker, 0.0, 150.0, evidence)

    assert kinds(events) == [f"start:{A}", f"now:{B}", f"end:{B}", f"start:{C}", f"end:{C}"]


def test_a_twin_aired_right_after_the_play_is_a_new_play_not_a_renaming() -> None:
    """The original (A) plays with its remaster (B) heard alongside at the shared alignment; then
    the station airs B from its start. B's new airing is at another alignment, heard alongside A's
    lingering evidence for a few seconds: it must not move the twin, so A's play ends and B's
    starts."""
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        heard = []
        if 1.5 <= t < 63.0:
            fading = 0.85 if t < 60.0 else 0.85 - (t - 60.0) * 0.25
            heard.append(playing(A, min(t, 60.5), 0.0, since_s=0.0, confidence=fading))
        if 1.5 <= t < 60.5:
            heard.append(playing(B, t, 40.0, since_s=0.0, confidence=0.8))  # the shared audio
        if 61.0 <= t < 120.5:
            heard.append(playing(B, min(t, 120.0), -60.0, since_s=60.0, confidence=0.85))  # aired anew
        return sorted(heard, key=lambda e: -e.confidence)

    events = run(tracker, 0.0, 140.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}", f"start:{B}", f"end:{B}"]
    assert events[2][1].position_start_s == pytest.approx(0.0, abs=1.0)


def test_a_twin_follows_the_play_when_the_play_resolves_a_repeat() -> None:
    """The play starts at a repeat of its music (alignment 12 s off) with the twin heard there too;
    once the true alignment wins, the play corrects its position, and the twin, kept at its offset
    from the play, is still the twin when the shared stretch ends."""
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        heard = []
        repeat = t < 10.0
        if 1.5 <= t < 60.5:
            heard.append(playing(A, min(t, 60.0), 52.0 if repeat else 40.0, since_s=0.0, confidence=0.85))
        if 1.5 <= t < 100.5:
            heard.append(playing(B, min(t, 100.0), 12.0 if repeat else 0.0, since_s=0.0, confidence=0.8))
        return heard

    events = run(tracker, 0.0, 120.0, evidence)

    assert kinds(events) == [f"start:{A}", f"now:{B}", f"end:{B}"]
    renamed = events[1][1]
    assert renamed.play.position_at(renamed.play.started_s) == pytest.approx(0.0, abs=0.5)


def test_a_mix_entry_holding_two_tracks_aired_back_to_back_does_not_merge_their_plays() -> None:
    """The catalog holds a continuous mix B of A then C. A airs, then C: B matches all along, like
    A's twin. When A stops matching, C is already as strong: the audio moved on to another
    recording, so A's play ends instead of being renamed B (which would make one play of two)."""
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        heard = []
        if 1.5 <= t < 64.0:  # A, fading out of the horizon after it ends at 60 s
            heard.append(playing(A, min(t, 60.5), 40.0, since_s=0.0,
                                 confidence=0.85 if t < 60.0 else max(0.1, 0.85 - (t - 60.0) * 0.25)))
        if 1.5 <= t < 120.5:
            heard.append(playing(B, min(t, 120.0), 0.0, since_s=0.0, confidence=0.8))
        if 61.0 <= t < 120.5:  # C from 60 s, at its position 0
            heard.append(playing(C, min(t, 120.0), -60.0, since_s=60.0,
                                 confidence=min(0.85, 0.3 + (t - 61.0) * 0.3)))
        return sorted(heard, key=lambda e: -e.confidence)

    events = run(tracker, 0.0, 140.0, evidence)

    assert kinds(events)[:2] == [f"start:{A}", f"end:{A}"]
    assert not any(isinstance(e, PlayReidentified) for _, e in events)


def test_a_twin_winning_for_less_than_twin_lead_s_neither_renames_nor_splits_the_play() -> None:
    """Noise lets the twin beat the play now and then for a second or two: the play goes on under
    its name; renaming needs the twin to keep winning for ``TWIN_LEAD_S``."""
    assert TWIN_LEAD_S > 2.0
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        heard = []
        if 1.5 <= t < 90.5:
            dip = t >= 20.0 and int(t) % 10 < 2  # the play's own recording dips for 2 s
            heard.append(playing(A, min(t, 90.0), 40.0, since_s=0.0, confidence=0.5 if dip else 0.85))
            heard.append(playing(B, min(t, 90.0), 0.0, since_s=0.0, confidence=0.8))
        return sorted(heard, key=lambda e: -e.confidence)

    events = run(tracker, 0.0, 110.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}"]


def test_an_outage_inside_continue_within_s_does_not_break_a_twin() -> None:
    """The stream drops for 20 s (less than ``continue_within_s``) while the shared audio plays;
    when it returns only the twin matches. The outage is not a gap in the twin's evidence (as for
    the play's own), so the play is renamed, not split."""
    assert PARAMS.continue_within_s > 20.0
    tracker = PlayTracker(PARAMS)
    events: list[tuple[float, TrackerEvent]] = []
    for step in range(round(100.0 / HOP_S)):
        t = step * HOP_S
        if 30.0 <= t < 50.0:
            observation = Observation(t, (), source_up=False)
        elif t < 30.0:
            observation = Observation(t, tuple(sorted(
                [playing(A, t, 40.0, since_s=0.0, confidence=0.85),
                 playing(B, t, 0.0, since_s=0.0, confidence=0.8)], key=lambda e: -e.confidence))
                if t >= 1.5 else ())
        else:
            observation = Observation(t, (playing(B, min(t, 90.0), 0.0, since_s=50.0, confidence=0.85),)
                                      if t < 90.5 else ())
        events.extend((t, event) for event in tracker.observe(observation))

    assert kinds(events)[:2] == [f"start:{A}", f"now:{B}"]
    assert not any(isinstance(e, PlayStarted) for _, e in events[1:]), "one play across the outage"


def test_a_twin_heard_for_less_than_the_minimum_is_a_track_change() -> None:
    """Shared audio shorter than ``TWIN_MIN_SHARED_S`` (a common intro, a crossfade) does not show
    that the first name was wrong: the play ends and the other track's starts, as before."""
    tracker = PlayTracker(PARAMS)

    events = run(tracker, 0.0, 80.0, shared_then_only(A, B, shared_until_s=TWIN_MIN_SHARED_S - 5.0,
                                                      second_until_s=50.0))

    assert kinds(events) == [f"start:{A}", f"end:{A}", f"start:{B}", f"end:{B}"]


def test_a_track_blended_in_after_the_play_began_still_takes_over_as_its_own_play() -> None:
    """A DJ blend: B is mixed in 40 s into A's play and heard alongside it for 30 s before A fades
    out. B was not heard from A's start, so it is a new play, not a twin."""
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        heard = []
        if 1.5 <= t < 70.5:
            heard.append(playing(A, min(t, 70.0), 0.0, since_s=0.0, confidence=0.85))
        if 41.5 <= t < 120.5:
            heard.append(playing(B, min(t, 120.0), -40.0, since_s=40.0, confidence=0.8))
        return heard

    events = run(tracker, 0.0, 140.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}", f"start:{B}", f"end:{B}"]
    (_, ended_a), (_, started_b) = events[1:3]
    assert isinstance(ended_a, PlayEnded) and ended_a.reason == "track_changed"
    assert started_b.play.started_s >= ended_a.ended_s


def test_a_renamed_play_is_not_split_when_its_first_name_matches_again_alongside() -> None:
    """After the rename, the first name matching again beside the twin (repeated shared audio) does
    not end or split the play: one play throughout."""
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        heard = []
        if 1.5 <= t < 150.5:
            b_only = 60.0 <= t < 90.0
            heard.append(playing(B, min(t, 150.0), 0.0, since_s=0.0, confidence=0.8))
            if not b_only:
                heard.append(playing(A, min(t, 150.0), 40.0, since_s=90.0 if t >= 90.0 else 0.0,
                                     confidence=0.85))
        return sorted(heard, key=lambda e: -e.confidence)

    events = run(tracker, 0.0, 170.0, evidence)

    assert kinds(events)[:2] == [f"start:{A}", f"now:{B}"]
    assert kinds(events)[-1].startswith("end:")
    assert not any(isinstance(e, PlayStarted) for _, e in events[1:]), "one play throughout"


def remaster_known_to_the_catalog(original: int, remaster: int) -> dict[int, tuple[SharedSpan, ...]]:
    """``catalog overlaps`` found ``original``'s first 120 s at the start of ``remaster``."""
    return {original: (SharedSpan(remaster, 0.0, 120.0, 0.0),),
            remaster: (SharedSpan(original, 0.0, 120.0, 0.0),)}


def noisy_loop_heard_as_both_copies(t: float) -> list[Evidence]:
    """The original (A) airs from stream 0 at alignment 0 under noise: a looping piece, so twice
    for six seconds only the remaster (B) is recognised, and at a repeat 20 s off, not where the
    two copies line up."""
    if 40.0 <= t < 46.0 or 70.0 <= t < 76.0:
        since_s = 40.0 if t < 46.0 else 70.0
        return [playing(B, t, -20.0, since_s=since_s, confidence=0.8)]
    if 1.5 <= t < 110.5:
        since_s = 0.0 if t < 40.0 else (46.0 if t < 70.0 else 76.0)
        return [playing(A, min(t, 110.0), 0.0, since_s=since_s, confidence=0.8)]
    return []


def test_shared_audio_the_catalog_knows_keeps_one_play_while_either_copy_is_heard() -> None:
    """Without the catalog's record the play splits into plays of both names (a false play of
    the remaster and a flap); with it, the remaster's evidence inside the shared stretch is
    evidence of the play, at whatever offset it matches."""
    unaware = run(PlayTracker(PARAMS), 0.0, 130.0, noisy_loop_heard_as_both_copies)
    aware = run(PlayTracker(PARAMS, shared_audio=remaster_known_to_the_catalog(A, B)), 0.0, 130.0,
                noisy_loop_heard_as_both_copies)

    assert f"start:{B}" in kinds(unaware)
    assert kinds(aware) == [f"start:{A}", f"end:{A}"]
    ended = aware[-1][1]
    assert isinstance(ended, PlayEnded) and ended.ended_s == pytest.approx(110.0 - 0.5, abs=0.5)


def test_shared_audio_learned_after_the_start_applies_to_the_open_play() -> None:
    """The daemon finds the shared audio after it starts; the open play uses it from then on."""
    tracker = PlayTracker(PARAMS)
    events = run(tracker, 0.0, 30.0, noisy_loop_heard_as_both_copies)
    tracker.know_shared_audio(remaster_known_to_the_catalog(A, B))
    events += run(tracker, 30.0, 130.0, noisy_loop_heard_as_both_copies)

    assert kinds(events) == [f"start:{A}", f"end:{A}"]


def test_past_the_shared_stretch_the_other_copy_takes_the_play_over() -> None:
    """The remaster goes on where the original ends: inside the shared stretch its evidence keeps
    the play; past it, it is a recording of its own, and (heard alongside from the start) renames
    the play rather than splitting it."""
    a_in_b = {A: (SharedSpan(B, 40.0, 100.0, 0.0),), B: (SharedSpan(A, 0.0, 60.0, 40.0),)}
    tracker = PlayTracker(PARAMS, shared_audio=a_in_b)

    events = run(tracker, 0.0, 120.0, shared_then_only(A, B, shared_until_s=60.0, second_until_s=100.0))

    assert kinds(events) == [f"start:{A}", f"now:{B}", f"end:{B}"]
    decided_s = events[1][0]
    assert 60.0 + PARAMS.position_jump_s <= decided_s < 60.0 + PARAMS.position_jump_s + PARAMS.end_after_s


def test_where_the_copies_line_up_the_better_one_renames_the_play_even_if_heard_late() -> None:
    """The play started as the remaster (B) while noise hid the original (A); A, heard only from
    30 s on (not a twin: not heard from the start), then matches clearly better where the two
    copies line up. The catalog says it is the same audio: the play is renamed, not split."""

    def evidence(t: float) -> list[Evidence]:
        heard = []
        if 1.5 <= t < 90.5:
            heard.append(playing(B, min(t, 90.0), 10.0, since_s=0.0, confidence=0.6 if t >= 30.0 else 0.8))
        if 30.0 <= t < 90.5:
            heard.append(playing(A, min(t, 90.0), 10.0, since_s=30.0, confidence=0.9))
        return sorted(heard, key=lambda e: -e.confidence)

    unaware = run(PlayTracker(PARAMS), 0.0, 110.0, evidence)
    aware = run(PlayTracker(PARAMS, shared_audio=remaster_known_to_the_catalog(A, B)), 0.0, 110.0, evidence)

    assert kinds(unaware) == [f"start:{B}", f"end:{B}", f"start:{A}", f"end:{A}"]
    assert kinds(aware) == [f"start:{B}", f"now:{A}", f"end:{A}"]
    assert aware[1][0] >= 30.0 + TWIN_LEAD_S


def test_the_recording_aired_again_from_its_start_inside_the_shared_stretch_is_a_new_play() -> None:
    """A airs to 100 s, a jingle, then A from its start; the remaster B lines up with each airing.
    B's evidence at the new airing's offset is not where the copies line up for the old play: it
    must not carry the old play over the jingle into the new airing."""
    tracker = PlayTracker(PARAMS, shared_audio=remaster_known_to_the_catalog(A, B))

    def evidence(t: float) -> list[Evidence]:
        if 1.5 <= t < 100.5:
            return [playing(A, min(t, 100.0), 0.0, since_s=0.0, confidence=0.8),
                    playing(B, min(t, 100.0), 0.0, since_s=0.0, confidence=0.7)]
        if 103.5 <= t < 200.5:
            return [playing(A, min(t, 200.0), -103.0, since_s=103.0, confidence=0.8),
                    playing(B, min(t, 200.0), -103.0, since_s=103.0, confidence=0.7)]
        return []

    events = run(tracker, 0.0, 220.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}", f"start:{A}", f"end:{A}"]
    assert events[1][1].ended_s == pytest.approx(99.5, abs=0.5)  # type: ignore[union-attr]
    assert events[2][1].position_start_s == pytest.approx(0.0, abs=0.5)  # type: ignore[union-attr]


def test_a_cut_from_a_medley_to_the_song_it_holds_is_a_track_change_soon_after() -> None:
    """A medley (B) holds the song (A) from 60 s on; the station cuts B at 100 s to A from its
    start. A's new airing lies inside the stretch the two share, at another offset: it bridges
    B's play for at most ``end_after_s``, then takes over, and B's play ends where B was last heard."""
    medley = {B: (SharedSpan(A, 60.0, 240.0, 0.0),), A: (SharedSpan(B, 0.0, 180.0, 60.0),)}
    tracker = PlayTracker(PARAMS, shared_audio=medley)

    def evidence(t: float) -> list[Evidence]:
        if 1.5 <= t < 100.5:
            heard = [playing(B, min(t, 100.0), 0.0, since_s=0.0, confidence=0.8)]
            if t >= 62.0:
                heard.append(playing(A, min(t, 100.0), -60.0, since_s=60.0, confidence=0.75))
            return heard
        if 101.0 <= t < 200.5:
            return [playing(A, min(t, 200.0), -100.5, since_s=100.5, confidence=0.8),
                    playing(B, min(t, 200.0), -40.5, since_s=100.5, confidence=0.75)]
        return []

    events = run(tracker, 0.0, 220.0, evidence)

    assert kinds(events) == [f"start:{B}", f"end:{B}", f"start:{A}", f"end:{A}"]
    (_, _), (decided_s, ended), (_, started), _ = events
    assert isinstance(ended, PlayEnded) and ended.ended_s == pytest.approx(99.5, abs=0.5)
    assert decided_s <= 100.0 + PARAMS.end_after_s + 1.0
    assert isinstance(started, PlayStarted) and started.play.track_id == A


def test_the_copy_lined_up_renames_the_play_once_its_own_track_stops_matching() -> None:
    """B (a remaster holding A's 120 s at its start) airs; noise lets only A be recognised for
    30 s, then only B, where the copies line up: the play is renamed, not split."""
    tracker = PlayTracker(PARAMS, shared_audio=remaster_known_to_the_catalog(A, B))

    def evidence(t: float) -> list[Evidence]:
        if 1.5 <= t < 30.5:
            return [playing(A, min(t, 30.0), 0.0, since_s=0.0, confidence=0.8)]
        if 31.0 <= t < 180.5:
            return [playing(B, min(t, 180.0), 0.0, since_s=30.5, confidence=0.8)]
        return []

    events = run(tracker, 0.0, 200.0, evidence)

    assert kinds(events) == [f"start:{A}", f"now:{B}", f"end:{B}"]


def test_chance_matches_of_the_other_copy_do_not_keep_a_play_past_its_end() -> None:
    """After A, music not in the catalog: weak chance matches of B inside its copy of A now and
    then. They bridge at most ``end_after_s``, and the end is back-dated to A's own evidence."""
    tracker = PlayTracker(PARAMS, shared_audio=remaster_known_to_the_catalog(A, B))
    rng = random.Random(1)

    def evidence(t: float) -> list[Evidence]:
        if 1.5 <= t < 90.5:
            return [playing(A, min(t, 90.0), 0.0, since_s=0.0, confidence=0.8)]
        if t > 90.5 and round(t / HOP_S) % 12 == 0:  # every 3 s
            alignment_s = rng.uniform(-t, -t + 120.0)  # anywhere in B's copy
            return [Evidence(B, alignment_s, 0.25, PARAMS.min_aligned_windows, t - 1.0, t - 0.5)]
        return []

    events = run(tracker, 0.0, 160.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}"]
    decided_s, ended = events[1]
    assert isinstance(ended, PlayEnded) and ended.ended_s == pytest.approx(89.5, abs=0.5)
    assert decided_s <= 90.0 + 2 * PARAMS.end_after_s + 1.0


def test_a_copy_heard_while_the_play_is_outside_the_shared_stretch_is_another_recording() -> None:
    """The catalog's record only covers the stretch the two share: the original airing past it,
    then the remaster, is a track change as always."""
    tracker = PlayTracker(PARAMS, shared_audio=remaster_known_to_the_catalog(A, B))

    def evidence(t: float) -> list[Evidence]:
        if 1.5 <= t < 60.5:
            return [playing(A, min(t, 60.0), 150.0, since_s=0.0)]  # A at 150-210 s: not shared
        if 61.5 <= t < 100.5:
            return [playing(B, min(t, 100.0), -60.0, since_s=60.0)]  # B from its start
        return []

    events = run(tracker, 0.0, 120.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}", f"start:{B}", f"end:{B}"]


def test_a_looping_track_matching_at_its_repeats_stays_one_play() -> None:
    """A loop makes the track match at two positions. Once both were heard together, the play
    resuming at the other one after a noisy gap is a corrected position, not a new play."""
    tracker = PlayTracker(PARAMS)
    loop_s = 30.0

    def evidence(t: float) -> list[Evidence]:
        if 1.5 <= t < 30.0:
            heard = [playing(A, t, 0.0, since_s=0.0, confidence=0.8)]
            if 10.0 <= t < 14.0:  # the repeat 30 s later in the track matches weakly alongside
                heard.append(playing(A, t, loop_s, since_s=10.0, confidence=0.3))
            return heard
        if 33.0 <= t < 60.5:  # after 3 s of noise only the repeat's position is recognised
            return [playing(A, min(t, 60.0), loop_s, since_s=33.0, confidence=0.8)]
        return []

    events = run(tracker, 0.0, 80.0, evidence)

    assert kinds(events) == [f"start:{A}", f"end:{A}"]
    assert tracker.current is None


def test_a_repeat_never_heard_alongside_is_a_position_jump() -> None:
    """The same schedule without the moment both positions were heard: a new play (the guard of
    the test above)."""
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        if 1.5 <= t < 30.0:
            return [playing(A, t, 0.0, since_s=0.0, confidence=0.8)]
        if 33.0 <= t < 60.5:
            return [playing(A, min(t, 60.0), 30.0, since_s=33.0, confidence=0.8)]
        return []

    assert kinds(run(tracker, 0.0, 80.0, evidence)) == [f"start:{A}", f"end:{A}", f"start:{A}", f"end:{A}"]


def moved_at_40_s(
    break_s: float, alignment_s: float, end_s: float | None = None,
) -> Callable[[float], list[Evidence]]:
    """Track A from 0 s; at 40 s, after ``break_s`` of nothing, its evidence is at ``alignment_s``."""
    resumed_s = 40.0 + break_s

    def evidence(t: float) -> list[Evidence]:
        if t < 1.5:
            return []
        if t < 40.0:
            return [playing(A, t, 0.0, since_s=0.0)]
        if t < resumed_s + 0.5 or (end_s is not None and t >= end_s + 0.5):
            return []
        return [playing(A, t if end_s is None else min(t, end_s), alignment_s, since_s=resumed_s)]

    return evidence


def test_the_track_aired_again_after_a_break_is_a_new_play() -> None:
    # a 3 s jingle, then the station starts the track again at its 10 s mark
    events = run(PlayTracker(PARAMS), 0.0, 70.0, moved_at_40_s(3.0, -33.0))

    assert kinds(events) == [f"start:{A}", f"end:{A}", f"start:{A}"]
    second = events[2][1]
    assert isinstance(second, PlayStarted)
    assert second.play.started_s == pytest.approx(43.0)
    assert second.position_start_s == pytest.approx(10.0)


def test_an_unbroken_move_to_another_position_corrects_the_play() -> None:
    """Ambient or looped music matches at many offsets; when the evidence moves to another one
    without a break, the audio never stopped being this track: one play, position corrected."""
    events = run(PlayTracker(PARAMS), 0.0, 80.0, moved_at_40_s(0.0, -30.0, end_s=60.0))

    assert kinds(events) == [f"start:{A}", f"end:{A}"]
    ended = events[1][1]
    assert isinstance(ended, PlayEnded)
    assert ended.position_end_s == pytest.approx(30.0, abs=0.5), "the corrected position"


def test_slow_drift_within_the_jump_tolerance_stays_one_play() -> None:
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        return [playing(A, t, 0.02 * t, since_s=0.0)] if t >= 1.5 else []  # 2% speed-up: 2.4 s over 2 min

    assert kinds(run(tracker, 0.0, 120.0, evidence)) == [f"start:{A}"]


def alignment_steps(alignment_s: float) -> float:
    """Alignments as voting reports them: in quarter-second steps (the live hop)."""
    return round(alignment_s / 0.25) * 0.25


@pytest.mark.parametrize("speed", [0.97, 1.03])
def test_a_station_playing_fast_or_slow_reports_its_speed_and_end_position(speed: float) -> None:
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        # Track position 10 s at stream time 0, moving ``speed`` s into the track per second; the
        # evidence's alignment is the median over its windows (up to 4 s back): half of that ago.
        mid_s = max(0.0, t - 2.25)
        return [playing(A, t, alignment_steps(10.0 + (speed - 1.0) * mid_s), since_s=0.0)] if t >= 1.5 else []

    events = run(tracker, 0.0, 180.0, evidence)
    ended = tracker.close(180.0)[0]
    assert kinds(events) == [f"start:{A}"], "one play however far the alignment drifts"
    assert isinstance(ended, PlayEnded)
    assert ended.play.speed_ratio == pytest.approx(speed, abs=0.005)
    true_end_s = 10.0 + speed * ended.ended_s
    assert ended.position_end_s == pytest.approx(true_end_s, abs=0.5), "positions follow the drift"


def test_a_short_play_keeps_the_speed_the_evidence_reported() -> None:
    tracker = PlayTracker(PARAMS)
    events = run(tracker, 0.0, 15.0, lambda t: [playing(A, t, 10.0, since_s=0.0)] if t >= 1.5 else [])
    ended = tracker.close(15.0)[0]
    assert kinds(events) == [f"start:{A}"] and isinstance(ended, PlayEnded)
    assert ended.play.speed_ratio == 1.0, "under SPEED_MIN_SPAN_S of evidence: no estimate"


def test_start_is_never_back_dated_before_position_zero_or_the_previous_end() -> None:
    tracker = PlayTracker(PARAMS)

    def evidence(t: float) -> list[Evidence]:
        # A's first supporting window appears to start at 5 s, but position 0 is at stream 8 s.
        return [Evidence(A, -8.0, 0.9, 8, first_aligned_s=5.0, last_aligned_s=t - 0.5)] if t >= 10 else []

    events = run(tracker, 0.0, 20.0, evidence)
    started = events[0][1]
    assert isinstance(started, PlayStarted)
    assert started.play.started_s == pytest.approx(8.0)
    assert started.position_start_s == pytest.approx(0.0)


def test_close_ends_the_open_play_at_its_last_evidence() -> None:
    tracker = PlayTracker(PARAMS)
    run(tracker, 0.0, 20.0, lambda t: [playing(A, t, 0.0, since_s=0.0)] if t >= 1.5 else [])

    events = tracker.close(20.0)

    assert [type(e) for e in events] == [PlayEnded]
    assert events[0].ended_s == pytest.approx(20.0 - HOP_S - 0.5)
    assert tracker.current is None
    assert tracker.close(21.0) == []


def test_stream_time_never_runs_backwards() -> None:
    tracker = PlayTracker(PARAMS)
    run(tracker, 0.0, 10.0, lambda t: [playing(A, t, 0.0, since_s=0.0)] if t >= 1.5 else [])
    # A late observation stamped in the past must not re-open or end anything on its own.
    assert tracker.observe(Observation(2.0, ())) == []
    assert tracker.current is not None


@pytest.mark.parametrize("seed", range(5))
def test_random_schedules_yield_one_play_per_segment_in_order(seed: int) -> None:
    """Property: for any schedule of clean catalog segments separated by gaps longer than
    ``end_after_s`` or by direct changes, the plays are exactly the segments, in order."""
    rng = random.Random(seed)
    schedule: list[tuple[float, float, int, float]] = []  # start, end, track, alignment
    t = 2.0
    for _ in range(8):
        length = rng.uniform(20, 60)
        track = rng.randint(1, 5)
        if schedule and schedule[-1][2] == track:
            track += 10
        alignment = rng.uniform(0, 100) - t
        schedule.append((t, t + length, track, alignment))
        t += length + (rng.choice([0.0, PARAMS.end_after_s + rng.uniform(1, 10)]))
    tracker = PlayTracker(PARAMS)

    def evidence(now: float) -> list[Evidence]:
        for start, end, track, alignment in schedule:
            if start + 1.5 <= now < end + 0.5:
                return [Evidence(track, alignment, 0.9, 8, max(start, now - 4), min(now, end + 0.5) - 0.5)]
        return []

    events = run(tracker, 0.0, t + 20.0, evidence)
    starts = [e for _, e in events if isinstance(e, PlayStarted)]
    ends = [e for _, e in events if isinstance(e, PlayEnded)]
    assert [s.play.track_id for s in starts] == [s[2] for s in schedule]
    assert len(ends) == len(starts)
    for started, (start, _end, _track, _alignment) in zip(starts, schedule, strict=True):
        assert started.play.started_s == pytest.approx(start)
