"""A station that plays its music fast or slow (broadcast playout at +-3 %): the live voter and
tracker, on real music and the shipped fingerprint, report the play's speed within 0.5 % and its
end position on the track's own timeline, and a one-shot 10 s snippet reports its speed too
(``evaluation.speed``, the benchmark's own code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunetrace.audio.decode import decode_file
from tunetrace.config import parse_config
from tunetrace.encoders import create_encoder
from tunetrace.evaluation.speed import Airing, Snippet, add_exactly, air, identify_speed, single_track_catalog
from tunetrace.identify import Recognizer
from tunetrace.store.memory import MemoryCatalog
from tunetrace.tracker import PlayEnded, PlayStarted


@pytest.mark.parametrize("speed", [0.97, 1.03])
def test_a_track_played_fast_or_slow_is_one_play_with_its_speed_measured(
    warzone_tracks: list[Path], speed: float,
) -> None:
    config = parse_config({})
    encoder = create_encoder(config.encoder)
    audio = decode_file(warzone_tracks[3], encoder.info.sample_rate, max_seconds=150.0)
    airing = Airing(from_s=20.0, played_s=100.0, speed=speed)

    events = air(config, encoder, single_track_catalog(encoder, audio), audio, airing)

    assert [type(e).__name__ for e in events] == ["PlayStarted", "PlayEnded"], events
    started, ended = events
    assert isinstance(started, PlayStarted) and isinstance(ended, PlayEnded)
    assert ended.play.speed_ratio == pytest.approx(speed, abs=0.005)
    assert ended.position_end_s == pytest.approx(airing.from_s + speed * ended.ended_s, abs=1.0)
    assert started.position_start_s == pytest.approx(airing.from_s + speed * started.play.started_s, abs=1.5)


@pytest.mark.parametrize("speed", [0.97, 1.03])
def test_a_ten_second_snippet_played_fast_or_slow_is_identified_with_its_speed(
    warzone_tracks: list[Path], speed: float,
) -> None:
    config = parse_config({})
    encoder = create_encoder(config.encoder)
    rate = encoder.info.sample_rate
    tracks = [decode_file(path, rate, max_seconds=80.0) for path in warzone_tracks[2:5]]
    catalog = MemoryCatalog()
    for track_id, audio in enumerate(tracks, start=1):
        add_exactly(catalog, encoder, audio, track_id)
    recognizer = Recognizer(encoder, catalog, config.matcher)

    answer = identify_speed(recognizer, tracks[1], rate, Snippet(2, from_s=30.0, length_s=10.0, speed=speed))

    assert answer.track is not None and answer.track.track_id == 2
    assert answer.speed_measured
    assert answer.speed_ratio == pytest.approx(speed, abs=0.005)
