"""A station that plays its music fast or slow (broadcast playout at +-3 %): the live voter and
tracker, on real music and the shipped fingerprint, report the play's speed within 0.5 % and its
end position on the track's own timeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fakes import FakeCatalog, fake_track
from tunetrace.audio.decode import decode_file
from tunetrace.audio.resample import speed_change
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.config import parse_config
from tunetrace.encoders import create_encoder
from tunetrace.ringbuffer import WindowBatch
from tunetrace.tracker import PlayEnded, PlayStarted, PlayTracker, TrackerParams
from tunetrace.voting.horizon import HorizonVoter, horizon_params

TRACK_S = 150.0
PLAYED_FROM_S = 20.0
PLAYED_S = 100.0
BATCH_WINDOWS = 8


@pytest.mark.parametrize("speed", [0.97, 1.03])
def test_a_track_played_fast_or_slow_is_one_play_with_its_speed_measured(
    warzone_tracks: list[Path], speed: float,
) -> None:
    config = parse_config({})
    encoder = create_encoder(config.encoder)
    info = encoder.info
    rate = info.sample_rate
    audio = decode_file(warzone_tracks[3], rate, max_seconds=TRACK_S)
    catalog = FakeCatalog()
    windows, starts = frame(audio, WindowSpec(rate, info.window_s, info.hop_s))
    catalog.add_track(fake_track(7, "t7", len(starts), TRACK_S), encoder.embed(windows), starts / rate)
    voter = HorizonVoter(encoder, catalog, catalog.shape, horizon_params(
        encoder, config.matcher, config.tracker, silence_threshold_dbfs=-60.0,
    ))
    tracker = PlayTracker(TrackerParams.from_config(config.tracker))

    played = audio[round(PLAYED_FROM_S * rate) : round((PLAYED_FROM_S + PLAYED_S * speed) * rate)]
    on_air = speed_change(played, speed)
    live, live_starts = frame(on_air, WindowSpec(rate, info.window_s, config.tracker.window_hop_s))
    events = []
    for first in range(0, len(live_starts), BATCH_WINDOWS):
        batch = WindowBatch(live[first : first + BATCH_WINDOWS], live_starts[first : first + BATCH_WINDOWS])
        for observation in voter.process(batch):
            events.extend(tracker.observe(observation))
    end_s = on_air.size / rate
    events.extend(tracker.close(end_s))

    assert [type(e).__name__ for e in events] == ["PlayStarted", "PlayEnded"], events
    started, ended = events
    assert isinstance(started, PlayStarted) and isinstance(ended, PlayEnded)
    assert ended.play.speed_ratio == pytest.approx(speed, abs=0.005)
    true_position_end_s = PLAYED_FROM_S + speed * ended.ended_s
    assert ended.position_end_s == pytest.approx(true_position_end_s, abs=1.0)
    assert np.isclose(started.position_start_s, PLAYED_FROM_S + speed * started.play.started_s, atol=1.5)
