"""Identification of real music: the right track, its position within half a second, or no match.

The fast tests use three 40 s clips of warzone2100 tracks (``clip_catalog``); the ``slow`` ones
ingest all 30 full tracks (about 100 minutes of audio) and query 20 excerpts at seeded random
positions.  Music that was never ingested comes from a different game (wesnoth), so "no match"
is tested on real music of a similar kind, not on noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import correlate

from tests.fixtures.audio import Clip, cut_clip
from tests.fixtures.milvus import BuiltCatalog
from tunetrace.audio.decode import decode_file, probe_tags
from tunetrace.audio.resample import speed_change
from tunetrace.config import parse_config
from tunetrace.encoders import create_encoder
from tunetrace.identify import Identification, Recognizer
from tunetrace.store import Hit, Reference, Track, TrackSpan
from tunetrace.store.milvus import CatalogStore

DEFAULTS = parse_config(None)
ENCODER = create_encoder(DEFAULTS.encoder)
"""The default encoder, which the catalog fixtures ingest with."""
RATE = ENCODER.info.sample_rate
EXCERPT_S = 10.0
OFFSET_TOLERANCE_S = 0.5
CATALOG_BUILD_TIMEOUT_S = 1500
"""Whichever slow test runs first also pays for ingesting the soundtrack: 284 s at load 10 on 2 cores."""


@pytest.fixture(scope="module")
def clip_store(clip_catalog: BuiltCatalog) -> Iterator[CatalogStore]:
    with clip_catalog.open() as store:
        yield store


def recognizer(store: CatalogStore, **matcher: object) -> Recognizer:
    return Recognizer(ENCODER, store, parse_config({"matcher": matcher}).matcher)


def assert_identified(result: Identification, source: Path, catalog: BuiltCatalog, offset_s: float) -> None:
    expected = catalog.tracks[source]
    assert result.track is not None, f"{source.name} at {offset_s:.2f} s: no match ({result})"
    assert result.track.track_id == expected.track_id, f"{source.name}: got {result.track.title}"
    assert result.offset_s == pytest.approx(offset_s, abs=OFFSET_TOLERANCE_S)
    assert result.confidence >= DEFAULTS.matcher.min_confidence


@pytest.mark.parametrize("start_s", [0.0, 21.8, 29.99])
def test_clean_excerpts_are_identified_at_their_position(
    clip_store: CatalogStore, clip_catalog: BuiltCatalog, real_clips: list[Clip], start_s: float
) -> None:
    engine = recognizer(clip_store)
    for clip in real_clips:
        audio = decode_file(clip.path, RATE)
        excerpt = audio[round(start_s * RATE) : round((start_s + EXCERPT_S) * RATE)]
        assert_identified(engine.identify(excerpt), clip.path, clip_catalog, start_s)


def test_an_excerpt_recoded_to_mp3_is_identified(
    clip_store: CatalogStore, clip_catalog: BuiltCatalog, real_clips: list[Clip], tmp_path: Path
) -> None:
    clip = real_clips[2]
    excerpt = cut_clip(clip.path, tmp_path / "excerpt.mp3", 13.4, EXCERPT_S, 44100, ["-b:a", "96k"])
    result = recognizer(clip_store).identify(decode_file(excerpt.path, RATE))
    assert_identified(result, clip.path, clip_catalog, 13.4)


def test_music_that_was_never_ingested_gives_no_match(
    clip_store: CatalogStore, holdout_clips: list[Clip]
) -> None:
    engine = recognizer(clip_store)
    for clip in holdout_clips:
        result = engine.identify(decode_file(clip.path, RATE))
        assert not result.matched, f"{clip.source.name} matched {result.track}"
        assert result.track is None
        assert result.confidence < DEFAULTS.matcher.min_confidence


def test_silence_and_tiny_clips_get_an_honest_no_match(clip_store: CatalogStore) -> None:
    engine = recognizer(clip_store)
    silence, blip = np.zeros(5 * RATE, np.float32), np.full(400, 0.1, np.float32)
    for audio in (silence, np.zeros(0, np.float32), blip):
        result = engine.identify(audio)
        assert not result.matched
        assert result.offset_s == 0.0


class CountingReferences:
    """The clip store, with its ``references`` requests counted."""

    def __init__(self, store: CatalogStore) -> None:
        self.store = store
        self.requests = 0

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        return self.store.search(vectors, top_k)

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        return self.store.get_tracks(track_ids)

    def tracks(self) -> list[Track]:
        return self.store.tracks()

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        self.requests += 1
        return self.store.references(spans)


def test_verification_runs_only_in_a_catalog_large_enough_to_need_it(
    clip_store: CatalogStore, clip_catalog: BuiltCatalog, real_clips: list[Clip], holdout_clips: list[Clip],
) -> None:
    clip = real_clips[1]
    excerpt = decode_file(clip.path, RATE)[round(7.3 * RATE) : round((7.3 + EXCERPT_S) * RATE)]
    small = CountingReferences(clip_store)
    result = Recognizer(ENCODER, small, DEFAULTS.matcher).identify(excerpt)
    assert_identified(result, clip.path, clip_catalog, 7.3)
    assert small.requests == 0  # three clips are far below verify_from_vectors
    small_opted_in = CountingReferences(clip_store)
    engine = Recognizer(ENCODER, small_opted_in, parse_config({"matcher": {"verify_candidates": 6}}).matcher)
    assert_identified(engine.identify(excerpt), clip.path, clip_catalog, 7.3)
    assert small_opted_in.requests == 0

    counted = CountingReferences(clip_store)
    opted_in = {"verify_candidates": 6, "verify_from_vectors": 0, "verify_queries": "all"}
    engine = Recognizer(ENCODER, counted, parse_config({"matcher": opted_in}).matcher)
    result = engine.identify(excerpt)
    assert counted.requests == 1  # one request for every leading candidate
    assert_identified(result, clip.path, clip_catalog, 7.3)
    assert result.best_candidate is not None and result.best_candidate.aligned_windows >= 15
    unknown = [decode_file(other.path, RATE) for other in holdout_clips]
    before = counted.requests
    answers = engine.identify_many([excerpt, *unknown])
    assert counted.requests == before + 1  # the whole batch's candidates in one request, as its search
    assert_identified(answers[0], clip.path, clip_catalog, 7.3)
    assert not any(answer.matched for answer in answers[1:])


def test_only_queries_hits_alone_leave_unsure_are_verified(
    clip_store: CatalogStore, clip_catalog: BuiltCatalog, real_clips: list[Clip],
) -> None:
    clip = real_clips[0]
    excerpt = decode_file(clip.path, RATE)[round(4.0 * RATE) : round((4.0 + EXCERPT_S) * RATE)]
    verifying = {"verify_candidates": 6, "verify_from_vectors": 0, "large_catalog_vectors": 0}

    confident = CountingReferences(clip_store)
    sure = Recognizer(ENCODER, confident, parse_config({"matcher": verifying}).matcher).identify(excerpt)
    assert_identified(sure, clip.path, clip_catalog, 4.0)
    assert not sure.verified and confident.requests == 0  # answered on hits alone: no catalog read
    # Nor when another speed ratio tried leaves the same query unsure: the best ratio decides.
    two_speeds = CountingReferences(clip_store)
    matcher = parse_config({"matcher": verifying | {"speed_ratios": [1.0, 1.03]}}).matcher
    either = Recognizer(ENCODER, two_speeds, matcher).identify(excerpt)
    assert_identified(either, clip.path, clip_catalog, 4.0)
    assert not either.verified and two_speeds.requests == 0

    # Hits alone refuse everything (threshold 1.0): the query has many windows in time, so it is
    # unsure and verified, and its verified answer is judged by min_confidence (routing only: in
    # three clips nothing crowds a true match out; tests/test_verify.py covers the re-scoring).
    thresholds = {"min_confidence": 0.0, "min_confidence_large": 1.0}
    unsure = CountingReferences(clip_store)
    engine = Recognizer(ENCODER, unsure, parse_config({"matcher": verifying | thresholds}).matcher)
    assert engine.min_confidence() == 1.0 and engine.min_confidence(verified=True) == 0.0
    rescued = engine.identify(excerpt)
    assert unsure.requests == 1
    assert rescued.verified
    assert_identified(rescued, clip.path, clip_catalog, 4.0)

    # A query with too few windows in time to be an answer is not worth a catalog read.
    strict = thresholds | {"min_aligned_windows": 10_000}
    few = CountingReferences(clip_store)
    refused = Recognizer(ENCODER, few, parse_config({"matcher": verifying | strict}).matcher).identify(
        excerpt)
    assert not refused.matched and not refused.verified and few.requests == 0

    every = CountingReferences(clip_store)
    always = verifying | {"verify_queries": "all"}
    checked = Recognizer(ENCODER, every, parse_config({"matcher": always}).matcher).identify(excerpt)
    assert every.requests == 1 and checked.verified
    assert_identified(checked, clip.path, clip_catalog, 4.0)


def test_a_large_catalog_answers_on_hits_alone_with_its_own_threshold(
    clip_store: CatalogStore, clip_catalog: BuiltCatalog, real_clips: list[Clip],
) -> None:
    clip = real_clips[2]
    excerpt = decode_file(clip.path, RATE)[round(12.0 * RATE) : round((12.0 + EXCERPT_S) * RATE)]
    thresholds = {"min_confidence": 1.0, "min_confidence_large": 0.0}  # refuse anything short of certain
    small = recognizer(clip_store, **thresholds)
    assert small.min_confidence() == 1.0  # three clips are far below large_catalog_vectors
    refused = small.identify(excerpt)
    assert not refused.matched and refused.best_candidate is not None
    assert refused.best_candidate.confidence < 1.0
    assert refused.best_candidate.track_id == clip_catalog.tracks[clip.path].track_id

    large = recognizer(clip_store, **thresholds, large_catalog_vectors=0)
    assert large.min_confidence() == 0.0
    assert_identified(large.identify(excerpt), clip.path, clip_catalog, 12.0)

    verified = recognizer(
        clip_store, **thresholds, large_catalog_vectors=0, verify_candidates=6, verify_from_vectors=0,
        verify_queries="all",
    )
    assert verified.min_confidence() == 0.0  # on hits alone
    assert verified.min_confidence(verified=True) == 1.0  # verification lifts chance: the usual threshold
    checked = verified.identify(excerpt)
    assert not checked.matched and checked.best_candidate is not None  # refused by the threshold
    assert checked.best_candidate.track_id == clip_catalog.tracks[clip.path].track_id
    assert checked.best_candidate.confidence < 1.0


def test_the_large_catalog_threshold_is_calibrated_per_encoder() -> None:
    fingerprint = parse_config({"encoder": {"name": "fingerprint"}}).matcher
    assert fingerprint.min_confidence_large < fingerprint.min_confidence
    spectral = parse_config({"encoder": {"name": "spectral"}}).matcher
    assert spectral.min_confidence_large == spectral.min_confidence  # not measured at size: unchanged
    chosen = parse_config({"matcher": {"min_confidence_large": 0.3}}).matcher
    assert chosen.min_confidence_large == 0.3
    lowered = parse_config({"matcher": {"min_confidence": 0.1}}).matcher
    assert lowered.min_confidence_large == 0.1  # never stricter than the small catalogs' own choice
    raised = parse_config({"matcher": {"min_confidence": 0.4}}).matcher
    assert raised.min_confidence_large == fingerprint.min_confidence_large


def test_a_sped_up_excerpt_is_found_at_its_speed(
    clip_store: CatalogStore, clip_catalog: BuiltCatalog, real_clips: list[Clip]
) -> None:
    clip = real_clips[0]
    audio = decode_file(clip.path, RATE)[round(10 * RATE) : round(22 * RATE)]
    played_fast = speed_change(audio, 1.04)  # 4% fast, as some stations do
    assert played_fast.size == pytest.approx(audio.size / 1.04, abs=2)

    result = recognizer(clip_store, speed_ratios=[0.96, 1.0, 1.04]).identify(played_fast)

    assert_identified(result, clip.path, clip_catalog, 10.0)
    assert result.speed_measured
    assert result.speed_ratio == pytest.approx(1.04, abs=0.005)  # 1.04 tried, its drift measured


def test_the_catalog_shape_counts_every_vector(clip_store: CatalogStore, clip_catalog: BuiltCatalog) -> None:
    shape = recognizer(clip_store).shape
    assert set(shape.track_vectors) == {t.track_id for t in clip_catalog.tracks.values()}
    assert shape.total_vectors == clip_store.vector_count()


# -- the whole soundtrack (slow) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def warzone_store(warzone_catalog: BuiltCatalog) -> Iterator[CatalogStore]:
    with warzone_catalog.open() as store:
        yield store


@pytest.mark.slow
@pytest.mark.timeout(CATALOG_BUILD_TIMEOUT_S)
def test_the_whole_soundtrack_is_in_the_catalog(
    warzone_store: CatalogStore, warzone_tracks: list[Path]
) -> None:
    tracks = warzone_store.tracks()
    assert len(tracks) == len(warzone_tracks) >= 20
    assert sum(t.duration_s for t in tracks) > 30 * 60


@pytest.mark.slow
@pytest.mark.timeout(CATALOG_BUILD_TIMEOUT_S)
def test_twenty_random_excerpts_of_the_soundtrack_are_identified(
    warzone_store: CatalogStore, warzone_catalog: BuiltCatalog, warzone_tracks: list[Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(20240601)
    engine = recognizer(warzone_store)
    sources = rng.choice(len(warzone_tracks), size=20, replace=len(warzone_tracks) < 20)
    misses = []
    for n, index in enumerate(sources):
        source = warzone_tracks[int(index)]
        duration_s = warzone_catalog.tracks[source].duration_s
        start_s = round(float(rng.uniform(0.0, duration_s - EXCERPT_S - 0.5)), 3)
        excerpt = cut_clip(source, tmp_path / f"excerpt-{n}.wav", start_s, EXCERPT_S, 44100)
        query = decode_file(excerpt.path, RATE)
        result = engine.identify(query)
        expected = warzone_catalog.tracks[source]
        exact = (
            result.track is not None
            and result.track.track_id == expected.track_id
            and abs(result.offset_s - start_s) <= OFFSET_TOLERANCE_S
        )
        elsewhere = result.track is not None and plays_there(
            Path(result.track.source_path), result.offset_s, query
        )
        if not exact and not elsewhere:
            misses.append(f"{source.name} at {start_s} s -> {result.track and result.track.title} "
                          f"at {result.offset_s:.2f} s (confidence {result.confidence:.2f})")
    assert misses == []


def plays_there(recording: Path, offset_s: float, query: np.ndarray) -> bool:
    """Whether ``recording`` holds the query's audio within half a second of ``offset_s``.

    Game music loops: track16 repeats a 15.36 s phrase verbatim, and ``menu.opus`` is contained in
    ``menu_enhanced.opus``. An answer pointing at another place with the same audio is right too;
    this checks that by waveform correlation, independently of the encoder.
    """
    audio = decode_file(recording, RATE)
    start = max(0, round((offset_s - OFFSET_TOLERANCE_S) * RATE))
    span = audio[start : start + query.size + round(2 * OFFSET_TOLERANCE_S * RATE)]
    if span.size < query.size:
        return False
    span64, query64 = span.astype(np.float64), query.astype(np.float64)
    dots = correlate(span64, query64, mode="valid", method="fft")
    running = np.concatenate([[0.0], np.cumsum(span64**2)])
    energies = np.sqrt(np.maximum(running[query.size :] - running[: -query.size], 0.0))
    similarity = dots / (energies * np.linalg.norm(query) + 1e-12)
    return float(similarity.max()) > 0.9


@pytest.mark.slow
@pytest.mark.timeout(CATALOG_BUILD_TIMEOUT_S)
def test_excerpts_of_another_soundtrack_give_no_match(
    warzone_store: CatalogStore, wesnoth_tracks: list[Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    engine = recognizer(warzone_store)
    # Jingles (victory, defeat) and the 10 s "silence.ogg" are not music to recognise.
    songs = [p for p in wesnoth_tracks if probe_tags(p).duration_s > 60.0]
    false_matches = []
    for n, index in enumerate(rng.choice(len(songs), size=10, replace=False)):
        source = songs[int(index)]
        excerpt = cut_clip(source, tmp_path / f"other-{n}.wav", float(rng.uniform(5.0, 40.0)), EXCERPT_S)
        result = engine.identify(decode_file(excerpt.path, RATE))
        if result.matched:
            false_matches.append(f"{source.name} -> {result.track} ({result.confidence:.2f})")
    assert false_matches == []
