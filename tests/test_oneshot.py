"""One-shot identification's request pattern: one search per query (or per batch of queries),
whatever its length, with the same answers as one query at a time.

A fake catalog (the real ``Catalog`` Protocol, in memory, counting searches) holds two synthetic
tracks embedded by the weight-free spectral encoder.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.fakes import FakeCatalog, fake_track
from tests.fixtures.audio import synthetic_music
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.config import parse_config
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.identify import Recognizer

ENCODER = SpectralEncoder()
RATE = ENCODER.info.sample_rate
TRACK_S = 40.0
TRACKS = {11: 1, 22: 2}
"""Track id -> seed of its synthetic music."""


@pytest.fixture(scope="module")
def music() -> dict[int, np.ndarray]:
    return {track_id: synthetic_music(TRACK_S, RATE, seed=seed) for track_id, seed in TRACKS.items()}


@pytest.fixture
def catalog(music: dict[int, np.ndarray]) -> FakeCatalog:
    store = FakeCatalog()
    spec = WindowSpec(RATE, ENCODER.info.window_s, ENCODER.info.hop_s)
    for track_id, audio in music.items():
        windows, starts = frame(audio, spec)
        store.add_track(
            fake_track(track_id, f"t{track_id}", len(starts), TRACK_S), ENCODER.embed(windows), starts / RATE,
        )
    return store


def excerpt(audio: np.ndarray, start_s: float, length_s: float) -> np.ndarray:
    return audio[round(start_s * RATE) : round((start_s + length_s) * RATE)].copy()


def test_a_long_query_is_one_search_request(catalog: FakeCatalog, music: dict[int, np.ndarray]) -> None:
    recognizer = Recognizer(ENCODER, catalog, parse_config({}).matcher, batch_size=16)
    query = excerpt(music[22], 7.3, 20.0)  # 381 windows at the default hop: 24 encoder batches

    before = catalog.searches
    result = recognizer.identify(query)

    assert catalog.searches - before == 1
    assert result.track is not None and result.track.track_id == 22
    assert result.offset_s == pytest.approx(7.3, abs=0.5)


def test_a_batch_of_queries_gets_the_answers_of_one_at_a_time(
    catalog: FakeCatalog, music: dict[int, np.ndarray],
) -> None:
    recognizer = Recognizer(ENCODER, catalog, parse_config({}).matcher, batch_size=16)
    queries = [
        excerpt(music[11], 3.0, 5.0),
        np.zeros(5 * RATE, np.float32),  # silent
        excerpt(music[22], 25.5, 3.0),
        np.full(RATE // 10, 0.1, np.float32),  # shorter than one window
        excerpt(music[11], 30.25, 10.0),
    ]
    one_by_one = [recognizer.identify(q) for q in queries]

    before = catalog.searches
    together = recognizer.identify_many(queries)

    assert catalog.searches - before == 1
    # The same answers; vectors embedded in other batch compositions differ in the last bits only.
    for alone, batched in zip(one_by_one, together, strict=True):
        assert (batched.track, batched.note) == (alone.track, alone.note)
        assert batched.aligned_windows == alone.aligned_windows
        assert batched.offset_s == pytest.approx(alone.offset_s, abs=1e-6)
        assert batched.confidence == pytest.approx(alone.confidence, abs=1e-4)
    assert [r.track.track_id if r.track else r.note for r in together] == [11, "silent", 22, "too_short", 11]
    assert [round(r.offset_s) for r in together if r.track] == [3, 26, 30]


def test_a_batch_with_nothing_audible_sends_no_request(catalog: FakeCatalog) -> None:
    recognizer = Recognizer(ENCODER, catalog, parse_config({}).matcher)
    before = catalog.searches
    answers = recognizer.identify_many([np.zeros(3 * RATE, np.float32), np.zeros(10, np.float32)])
    assert catalog.searches == before
    assert [a.note for a in answers] == ["silent", "too_short"]
