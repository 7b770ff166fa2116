"""The live pipeline on a file read as fast as possible: same stations, windows, voting and tracker
as the daemon, on the stream clock, so the plays of a known schedule are checked exactly and fast."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import Clip, write_wav
from tests.fixtures.milvus import BuiltCatalog, private_catalog_copy
from tunetrace.audio.decode import decode_file
from tunetrace.evaluation.degrade import rms
from tunetrace.evaluation.live import (
    EPOCH,
    CpuSample,
    PacedStreamServer,
    PlayRecord,
    Segment,
    TalkOver,
    cpu_breakdown,
    cpu_sample,
    plays_from_events,
    run_stream,
    score_stations,
    talk_over_ends,
)
from tunetrace.evaluation.run import SpeechPool
from tunetrace.pipeline import StreamClock
from tunetrace.sources.base import AudioBlock

RATE = 8000


def test_a_schedule_of_excerpts_yields_one_play_each_with_back_dated_times_and_positions(
    clip_catalog: BuiltCatalog, real_clips: list[Clip], holdout_clips: list[Clip], tmp_path: Path,
) -> None:
    first = decode_file(real_clips[0].path, RATE)
    second = decode_file(real_clips[1].path, RATE)
    unknown = decode_file(holdout_clips[0].path, RATE)
    silence = np.zeros(2 * RATE, np.float32)
    # 0-2 silence | 2-22 clip 0 from 10 s | 22-32 unknown | 32-34 silence | 34-56 clip 1 from 3 s
    # directly followed by 56-70 clip 0 from 20 s | 70-82 silence
    stream = np.concatenate([
        silence, first[10 * RATE : 30 * RATE], unknown[: 10 * RATE], silence,
        second[3 * RATE : 25 * RATE], first[20 * RATE : 34 * RATE], np.zeros(12 * RATE, np.float32),
    ])
    wav = write_wav(tmp_path / "stream.wav", stream, RATE)

    private = private_catalog_copy(clip_catalog, tmp_path / "data")
    config = clip_catalog.config.model_copy(update={"data_dir": private})
    sinks, _ = asyncio.run(run_stream(config, wav))

    ids = [clip_catalog.tracks[c.path].track_id for c in real_clips]
    plays = plays_from_events(sinks[0].events)
    assert [p.track_id for p in plays] == [ids[0], ids[1], ids[0]]
    expected = [(2.0, 22.0, 10.0), (34.0, 56.0, 3.0), (56.0, 70.0, 20.0)]
    for play, (start_s, end_s, position_s) in zip(plays, expected, strict=True):
        assert play.start_s == pytest.approx(start_s, abs=1.0)
        # Ends within 2 s: in this 3-clip catalog (240 vectors) every window's top 10 neighbours
        # are 4% of the catalog, so chance agreement at the play's alignment can outlast the track
        # by a second or two (on the 29-track benchmark catalog ends are within ~0.5 s).
        assert play.end_s == pytest.approx(end_s, abs=2.0)
        assert play.position_start_s == pytest.approx(position_s + (play.start_s - start_s), abs=0.6)
        assert play.decided_s - start_s < 6.0, "now-playing latency on the stream clock"
    kinds = [e.kind for _, e in sinks[0].events]
    assert kinds == ["play_started", "play_ended"] * 3
    assert all(e.play.started_at >= EPOCH for _, e in sinks[0].events)


def test_the_stream_clock_maps_a_play_time_back_onto_the_stream() -> None:
    """Play times are wall-clock; the benchmark scores them on the stream through this inverse."""
    clock = StreamClock(RATE)
    assert clock.stream_s_at(EPOCH) is None, "no stream clock before the first block"
    arrived = EPOCH + timedelta(seconds=0.37)  # the source's start-up delay
    block = AudioBlock(start_sample=5 * RATE, samples=np.zeros(RATE // 10, np.float32), captured_at=arrived)
    clock.update(block)
    for stream_s in (0.0, 5.0, 123.45):
        wall = clock.wall(stream_s)
        assert wall == arrived + timedelta(seconds=stream_s - 5.0)
        assert clock.stream_s_at(wall) == pytest.approx(stream_s, abs=1e-6)


def test_the_paced_stream_server_sends_a_file_at_the_pace_of_its_audio(tmp_path: Path) -> None:
    """On-air benchmark stations read this, as from a radio's stream server (not ffmpeg's ``-re``)."""
    audio = np.zeros(RATE, np.float32)  # 1 s
    wav = write_wav(tmp_path / "one-second.wav", audio, RATE)

    async def fetch() -> tuple[bytes, float, float]:
        server = PacedStreamServer(wav)
        await server.start()
        try:
            host, port = "127.0.0.1", server.port
            assert server.url("x") == f"http://{host}:{port}/x.wav"
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /x.wav HTTP/1.0\r\n\r\n")
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                first_at = loop.time() - started
                body = await reader.read()
            writer.close()
            return head + body, first_at, loop.time() - started
        finally:
            await server.close()

    received, first_s, total_s = asyncio.run(fetch())
    head, body = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 200")
    assert body == wav.read_bytes()
    assert first_s < 0.5, "the stream starts at once"
    assert 0.7 <= total_s < 3.0, "1 s of audio takes about 1 s to arrive"


@pytest.mark.slow
def test_stations_on_air_each_report_their_play_through_the_shared_batcher(
    clip_catalog: BuiltCatalog, real_clips: list[Clip], tmp_path: Path,
) -> None:
    """Three stations on air (real time, through ffmpeg over HTTP from the paced server) submit
    their windows to one recognition batcher: each gets its own decisions back and reports the
    clip at its position; the decoder children's CPU is counted.

    Clip 2: clip 0's passage from 8 s returns 18 s later (the fingerprint scores the two 0.6-0.7
    alike), so on 16 s of it the position is ambiguous and a model may pick the repeat."""
    clip = real_clips[2]
    audio = decode_file(clip.path, RATE)
    stream = np.concatenate([np.zeros(RATE, np.float32), audio[8 * RATE : 24 * RATE],
                             np.zeros(3 * RATE, np.float32)])  # 0-1 silence | 1-17 clip 2 from 8 s
    wav = write_wav(tmp_path / "stream.wav", stream, RATE)
    private = private_catalog_copy(clip_catalog, tmp_path / "data")
    config = clip_catalog.config.model_copy(update={"data_dir": private})

    before = cpu_sample()
    after: list[CpuSample] = []
    sinks, _ = asyncio.run(asyncio.wait_for(
        run_stream(config, wav, stations=3, realtime=True, cpu_at_end=after), timeout=120))
    cpu = cpu_breakdown(before, after[0])

    track_id = clip_catalog.tracks[clip.path].track_id
    for sink in sinks:
        assert sink.station is not None
        plays = plays_from_events(sink.events, sink.station.stream_s_at)
        assert [p.track_id for p in plays] == [track_id]
        assert plays[0].start_s == pytest.approx(1.0, abs=1.0)
        assert plays[0].position_start_s == pytest.approx(8.0 + (plays[0].start_s - 1.0), abs=0.6)
    assert cpu["decoders_s"] > 0, "the ffmpeg children's CPU is counted"


def test_talk_over_covers_a_tracks_intro_and_outro_at_the_asked_loudness(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    voice = [(0.3 * rng.standard_normal(3 * RATE)).astype(np.float32) for _ in range(2)]
    lines = [write_wav(tmp_path / f"line{i}.wav", audio, RATE) for i, audio in enumerate(voice)]
    music = (0.5 * np.sin(2 * np.pi * 440 * np.arange(40 * RATE) / RATE)).astype(np.float32)
    talk = TalkOver(SpeechPool(lines, RATE), snr_db=0.0, seconds=8.0)

    out = talk_over_ends(music, talk, RATE, np.random.default_rng(1))

    span = 8 * RATE
    np.testing.assert_array_equal(out[span:-span], music[span:-span])  # the middle is the music alone
    for part in (slice(0, span), slice(music.size - span, music.size)):
        speech = out[part] - music[part]
        assert 20 * np.log10(rms(music[part]) / rms(speech)) == pytest.approx(0.0, abs=0.1)


def test_every_station_is_scored_and_stations_that_decided_differently_are_counted() -> None:
    schedule = [Segment("track", 0.0, 60.0, track_id=1), Segment("unknown", 60.0, 90.0),
                Segment("track", 90.0, 150.0, track_id=2)]
    both_found = [PlayRecord(1, 0.5, 60.0, 3.0, 0.5), PlayRecord(2, 90.5, 150.0, 93.5, 0.5)]
    second_missed = [PlayRecord(1, 0.5, 60.0, 3.0, 0.5)]
    false_play = [*both_found, PlayRecord(7, 60.5, 80.0, 64.0, 10.0)]

    scored = score_stations(schedule, [both_found, both_found, second_missed, false_play], 150.0)

    assert scored["stations_scored"] == 4
    assert scored["reported_segments"] == 2 and scored["false_plays"] == 0  # the first station's
    assert scored["stations_differing"] == 2
    assert [s["missed_segments"] for s in scored["per_station"]] == [0, 0, 1, 0]
    assert [s["false_plays"] for s in scored["per_station"]] == [0, 0, 0, 1]
    alone = score_stations(schedule, [second_missed], 150.0)
    assert alone["stations_differing"] == 0 and alone["per_station"] == []
    assert alone["missed_segments"] == 1


def test_a_false_play_of_a_track_sharing_audio_with_the_one_on_air_is_counted_as_such() -> None:
    schedule = [Segment("track", 0.0, 60.0, track_id=1), Segment("unknown", 60.0, 90.0),
                Segment("track", 90.0, 150.0, track_id=9)]
    duplicate_during_track = PlayRecord(7, 10.0, 30.0, 13.0, 40.0)
    partner_not_on_air = PlayRecord(8, 65.0, 80.0, 68.0, 0.0)  # 9 plays later, not during it
    plays = [PlayRecord(1, 0.5, 60.0, 3.0, 0.5), duplicate_during_track, partner_not_on_air,
             PlayRecord(9, 90.5, 150.0, 93.0, 0.5)]
    shared = frozenset({frozenset({1, 7}), frozenset({8, 9})})

    scored = score_stations(schedule, [plays], 150.0, shared)
    plain = score_stations(schedule, [plays], 150.0)

    assert scored["false_plays"] == plain["false_plays"] == 2  # still false plays
    assert scored["false_plays_of_shared_audio"] == 1
    assert plain["false_plays_of_shared_audio"] == 0
    with pytest.raises(ValueError, match="no station"):
        score_stations(schedule, [], 150.0)


def test_a_remaster_holding_the_original_gives_one_play_of_whichever_recording_aired(
    real_clips: list[Clip], tmp_path: Path,
) -> None:
    """A catalog with an original and a remaster that holds its first 25 s: both match the shared
    audio, so either may name the play first; once the recordings part, the play is re-identified
    as the one still matching. Each stream gets one play of what aired, under one play id."""
    from tests.fixtures.milvus import build_catalog

    original = decode_file(real_clips[0].path, RATE)[: 40 * RATE]
    other = decode_file(real_clips[1].path, RATE)[: 40 * RATE]
    remaster = np.concatenate([original[: 25 * RATE], other])
    catalog = build_catalog(tmp_path / "catalog", [
        write_wav(tmp_path / "original.wav", original, RATE),
        write_wav(tmp_path / "remaster.wav", remaster, RATE),
    ])
    ids = {path.stem: track.track_id for path, track in catalog.tracks.items()}
    silence = np.zeros(2 * RATE, np.float32)
    renamed = 0
    for aired in ("original", "remaster"):
        audio = original if aired == "original" else remaster
        wav = write_wav(tmp_path / f"{aired}-stream.wav", np.concatenate([silence, audio, silence * 5]), RATE)
        private = private_catalog_copy(catalog, tmp_path / f"{aired}-data")
        config = catalog.config.model_copy(update={"data_dir": private})
        sinks, _ = asyncio.run(run_stream(config, wav))

        events = [event for _, event in sinks[0].events]
        plays = plays_from_events(sinks[0].events)
        published = [(e.kind, e.play.track_id) for e in events]
        assert [p.track_id for p in plays] == [ids[aired]], (aired, published)
        assert plays[0].start_s == pytest.approx(2.0, abs=1.0)
        assert plays[0].end_s == pytest.approx(2.0 + len(audio) / RATE, abs=2.0)
        assert {e.play.play_id for e in events} == {events[0].play.play_id}, "one play id throughout"
        assert events[-1].kind == "play_ended" and events[-1].play.track_id == ids[aired]
        renamed += len(plays[0].reidentified_from)
    assert renamed >= 1, "the tie on the shared audio named at least one play after the other recording"
