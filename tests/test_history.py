"""The play history against real databases (an SQLite file, a private PostgreSQL cluster), the
tracker's end reasons and outage rule, continuity, the report and the ``report`` command."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tunetrace.cli.main import main
from tunetrace.config import HistoryConfig, TrackerConfig, parse_config
from tunetrace.errors import ConfigError, HistoryError
from tunetrace.events import Play, PlayEvent
from tunetrace.history import Checkpoint, HistoryStore, continues, open_history, redact_url, resumable
from tunetrace.history.report import build_report, render
from tunetrace.history.sink import HistorySink
from tunetrace.tracker import Evidence, Observation, PlayEnded, PlayTracker, TrackerParams

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_play(station: str = "radio-one", track_id: int = 7, start_s: float = 0.0, **changes: object) -> Play:
    play = Play(
        play_id=f"{station}-{track_id}-{start_s}", station=station, track_id=track_id,
        title=f"Track {track_id}",
        artist="Artist", album="Album", started_at=at(start_s), position_start_s=0.5, confidence=0.8,
        speed_ratio=1.0,
    )
    return Play(**{**play.__dict__, **changes})  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = open_history(url)
    yield opened
    opened.close()


# -- the store --------------------------------------------------------------------------------------


def test_a_play_is_recorded_at_its_start_and_updated_at_its_end(store: HistoryStore) -> None:
    play = make_play(isrc="GBAYE0601498")
    store.record_play(play)
    assert store.plays(at(-1), at(1)) == [play]
    ended = play.ended(at(180), 180.5, "track_changed")
    store.record_play(ended)
    assert store.plays(at(-1), at(1)) == [ended]
    assert store.last_play("radio-one") == ended
    assert store.plays(at(1), at(10)) == [], "a play belongs to the range it started in"
    assert store.plays(at(-1), at(1), ["other"]) == []


def test_a_reidentified_play_is_one_row_naming_the_recording_it_was_renamed_to(store: HistoryStore) -> None:
    """The tracker renames a play whose catalog recording is held twice (a remaster): the pipeline
    publishes it again with the same id and the other track; the history keeps one play, renamed."""
    first_name = make_play(track_id=7)
    store.record_play(first_name)
    renamed = dataclasses.replace(first_name, track_id=8, title="Track 8", position_start_s=40.5)
    store.record_play(renamed)
    store.record_play(renamed.ended(at(200), 200.5, "evidence_lost"))

    (play,) = store.plays(at(-1), at(1))
    assert (play.play_id, play.track_id, play.title, play.position_start_s) == (
        first_name.play_id, 8, "Track 8", 40.5)
    assert play.started_at == first_name.started_at and play.end_reason == "evidence_lost"


def test_checkpoints_make_up_and_down_intervals(store: HistoryStore) -> None:
    for second, up in ((0, True), (1, True), (2, True), (3, False), (4, False), (5, True), (6, True)):
        store.checkpoint(Checkpoint("radio-one", at(second), up))
    intervals = store.intervals(at(-10), at(10))
    assert [(i.source_up, i.seconds) for i in intervals] == [(True, 3.0), (False, 2.0), (True, 1.0)]
    assert store.intervals(at(20), at(30)) == []


def test_a_play_left_open_by_a_crash_is_closed_at_its_last_evidence(store: HistoryStore) -> None:
    play = make_play()
    store.record_play(play)
    store.record_play(make_play("other-station", start_s=1.0))
    store.checkpoint(Checkpoint("radio-one", at(40), True, play.play_id, at(38.5), position_s=39.0))

    recovered = store.recover(["radio-one"])

    assert [(p.play_id, p.end_reason, p.ended_at, p.position_end_s) for p in recovered] == [
        (play.play_id, "crash_recovered", at(38.5), 39.0)]
    assert store.last_play("radio-one") == recovered[0]
    # Another daemon's station (a shared PostgreSQL history) is not ours to close.
    assert store.last_play("other-station").ended_at is None  # type: ignore[union-attr]
    assert store.recover(["radio-one"]) == []


def test_retention_deletes_only_what_ended_before_the_cutoff(store: HistoryStore) -> None:
    store.record_play(make_play(start_s=0).ended(at(100), 100, "evidence_lost"))
    store.record_play(make_play(start_s=200).ended(at(300), 100, "evidence_lost"))
    store.record_play(make_play(start_s=400))  # still open: never deleted
    store.checkpoint(Checkpoint("radio-one", at(0), True))
    store.checkpoint(Checkpoint("radio-one", at(100), True))
    purged = store.purge(at(150))
    assert (purged.plays, purged.intervals) == (1, 1)
    assert [p.started_at for p in store.plays(at(-1), at(1000))] == [at(200), at(400)]


def test_the_sqlite_history_is_a_plain_queryable_file(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    store = open_history(f"sqlite:///{path}")
    store.record_play(make_play().ended(at(60), 60.5, "shutdown"))
    store.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT station, track_id, end_reason, isrc FROM plays").fetchall()
    assert rows == [("radio-one", 7, "shutdown", None)]


def test_a_bad_history_url_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"history.url: .*sqlite:/// or postgresql://") as error:
        parse_config({"history": {"url": "mysql://u:hunter2@db/x"}})
    assert "hunter2" not in str(error.value)
    with pytest.raises(HistoryError, match=r"cannot connect to the PostgreSQL history") as failed:
        open_history("postgresql://tunetrace:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(failed.value)
    assert redact_url("postgresql://u:secret@h:5432/d") == "postgresql://u:***@h:5432/d"


# -- continuity and the tracker's end reasons ----------------------------------------------------------


def test_continuity_needs_the_same_track_at_the_predicted_position_within_the_threshold() -> None:
    interrupted = make_play(position_start_s=10.0).ended(at(60), 70.0, "shutdown")
    assert resumable(interrupted) is interrupted
    assert resumable(make_play().ended(at(60), 70.0, "track_changed")) is None

    def check(track_id: int, gap_s: float, position_s: float) -> bool:
        return continues(
            interrupted, track_id, at(60 + gap_s), position_s, within_s=30, position_tolerance_s=3,
        )

    assert check(7, 5.0, 75.0)
    assert check(7, 5.0, 77.5)
    assert not check(7, 5.0, 30.0), "same track, another position: a new airing"
    assert not check(8, 5.0, 75.0)
    assert not check(7, 45.0, 115.0), "an outage longer than the threshold"


A = 101
PARAMS = TrackerParams.from_config(TrackerConfig(continue_within_s=30.0))


def evidence_of(stream_s: float, *, since_s: float, alignment_s: float = 20.0) -> Evidence:
    return Evidence(A, alignment_s, 0.9, 8, first_aligned_s=max(since_s, stream_s - 4.0),
                    last_aligned_s=stream_s - 0.5)


def drive(tracker: PlayTracker, schedule: list[tuple[float, float, str]]) -> list[object]:
    """``(from_s, to_s, what)``: ``music`` (track A audible since the segment start), ``quiet``
    (audio without evidence) or ``down`` (the source is down), fed every 0.25 s."""
    events: list[object] = []
    for start_s, end_s, what in schedule:
        t = start_s
        while t < end_s:
            candidates = (evidence_of(t, since_s=start_s),) if what == "music" and t > start_s + 1.5 else ()
            events.extend(tracker.observe(Observation(t, candidates, source_up=what != "down")))
            t += 0.25
    return events


def test_a_five_second_outage_does_not_split_the_play() -> None:
    tracker = PlayTracker(PARAMS)
    events = drive(tracker, [(0, 60, "music"), (60, 65, "down"), (65, 120, "music")])
    assert len(events) == 1, events
    ended = tracker.close(120.0)
    assert [(type(e).__name__, getattr(e, "reason", None)) for e in ended] == [("PlayEnded", "shutdown")]


def test_an_outage_longer_than_the_threshold_ends_the_play_source_down_at_its_last_evidence() -> None:
    tracker = PlayTracker(PARAMS)
    events = drive(tracker, [(0, 60, "music"), (60, 100, "down")])
    ends = [e for e in events if isinstance(e, PlayEnded)]
    assert [e.reason for e in ends] == ["source_down"]
    assert ends[0].ended_s == pytest.approx(59.75, abs=0.5)


def test_an_outage_seen_only_when_the_source_is_back_is_held_or_ended_by_its_length() -> None:
    """A stalled stream reconnected within one tick: the tracker hears of the outage once, where the
    last audio ended, and next from the audio after it (the stream clock jumped over the gap)."""
    for gap_s, expected in ((6.0, []), (40.0, ["source_down"])):
        tracker = PlayTracker(PARAMS)
        events = drive(tracker, [(0, 60, "music")])
        events.extend(tracker.observe(Observation(59.75, source_up=False)))
        events.extend(drive(tracker, [(60 + gap_s, 120 + gap_s, "music")]))
        reasons = [e.reason for e in events if isinstance(e, PlayEnded)]
        assert reasons == expected, gap_s


def test_evidence_lost_without_an_outage() -> None:
    tracker = PlayTracker(PARAMS)
    events = drive(tracker, [(0, 60, "music"), (60, 80, "quiet")])
    assert [e.reason for e in events if isinstance(e, PlayEnded)] == ["evidence_lost"]


def test_the_old_behaviour_with_continuity_off() -> None:
    tracker = PlayTracker(TrackerParams.from_config(TrackerConfig(continue_within_s=0)))
    events = drive(tracker, [(0, 60, "music"), (60, 70, "down"), (70, 120, "music")])
    assert [e.reason for e in events if isinstance(e, PlayEnded)] == ["source_down"]


# -- the sink -----------------------------------------------------------------------------------------


def test_the_sink_recovers_at_start_and_keeps_the_last_play_for_continuity(tmp_path: Path) -> None:
    import asyncio

    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = open_history(url)
    store.record_play(make_play())
    store.checkpoint(Checkpoint("radio-one", at(30), True, make_play().play_id, at(29.0), 29.5))
    store.close()

    async def scenario() -> HistorySink:
        sink = HistorySink.from_url(url, ["radio-one"], HistoryConfig())
        await sink.start()
        await sink.publish_event(PlayEvent("play_started", make_play("radio-one", 9, 40.0)))
        await sink.close(1.0)
        return sink

    sink = asyncio.run(scenario())
    assert [(p.end_reason, p.ended_at) for p in sink.recovered] == [("crash_recovered", at(29.0))]
    assert sink.last_play("radio-one") == sink.recovered[0]


# -- the report -----------------------------------------------------------------------------------------


def _fill(store: HistoryStore) -> None:
    day2 = 86400.0
    for station, track, start_s, length_s in (
        ("radio-one", 7, 0, 200), ("radio-one", 8, 300, 100), ("radio-one", 7, 1000, 180),
        ("radio-one", 7, day2 + 50, 210), ("radio-two", 8, 10, 90),
    ):
        play = make_play(station, track, start_s)
        ended_at = play.started_at + timedelta(seconds=length_s)
        store.record_play(play.ended(ended_at, length_s, "evidence_lost"))
    for station in ("radio-one", "radio-two"):
        store.checkpoint(Checkpoint(station, at(-3600), True))
        store.checkpoint(Checkpoint(station, at(day2 + 3600), True))
        store.checkpoint(Checkpoint(station, at(day2 + 7200), False))  # up until here, then down
        store.checkpoint(Checkpoint(station, at(day2 + 10800), False))
    store.close()


def test_the_report_aggregates_plays_airtime_and_hours(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    _fill(open_history(url))
    store = open_history(url)
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    report = build_report(store.plays(start, end), store.intervals(start, end), start, end, "track", now=end)
    rows = {(r.station, r.track_id): r for r in report.rows}
    assert (rows["radio-one", 7].plays, rows["radio-one", 7].airtime_s) == (3, 590.0)
    assert rows["radio-one", 7].first_aired == at(0)
    assert rows["radio-one", 7].last_aired == at(86400 + 50 + 210)
    assert (rows["radio-two", 8].plays, rows["radio-two", 8].airtime_s) == (1, 90.0)
    hours = {h.station: h for h in report.hours}
    assert hours["radio-one"].monitored_s == pytest.approx(86400 + 3 * 3600)
    assert hours["radio-one"].down_s == pytest.approx(3600)

    by_day = build_report(store.plays(start, end), store.intervals(start, end), start, end, "day", now=end)
    day_rows = {(r.period, r.track_id): r.plays for r in by_day.rows if r.station == "radio-one"}
    assert day_rows == {("2026-03-01", 7): 2, ("2026-03-01", 8): 1, ("2026-03-02", 7): 1}
    day_hours = {h.period: h.monitored_s for h in by_day.hours if h.station == "radio-one"}
    assert day_hours == {"2026-03-01": pytest.approx(13 * 3600), "2026-03-02": pytest.approx(14 * 3600)}
    store.close()


def test_the_report_command_prints_table_csv_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None,
) -> None:
    config = tmp_path / "tunetrace.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    _fill(open_history(f"sqlite:///{tmp_path / 'data' / 'history.sqlite3'}"))
    base = ["report", "--config", str(config), "--from", "2026-03-01", "--to", "2026-03-31"]

    assert main([*base, "--by", "month"]) == 0
    table = capsys.readouterr().out
    assert "radio-one  2026-03  monitored 27.00 h, down 1.00 h, 4 play(s)" in table
    assert "0:09:50" in table  # track 7: 590 s on radio-one

    assert main([*base, "--format", "csv", "--station", "radio-two"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["station"], r["track_id"], r["isrc"], r["plays"], r["airtime_s"]) for r in rows] == [
        ("radio-two", "8", "", "1", "90.0")]
    assert float(rows[0]["monitored_h"]) == pytest.approx(27.0)

    assert main([*base, "--format", "json", "--by", "day"]) == 0
    data = json.loads(capsys.readouterr().out)
    one = next(s for s in data["stations"] if s["station"] == "radio-one")
    assert [p["period"] for p in one["periods"]] == ["2026-03-01", "2026-03-02"]

    assert main([*base[:-2], "--to", "2026-02-01"]) == 2
    assert "must be after --from" in capsys.readouterr().err
    assert main([*base[:-2], "--to", "March"]) == 2
    assert "--to 'March': not a date" in capsys.readouterr().err

    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(f"data_dir: {tmp_path / 'nothing-here'}\n")
    assert main(["report", "--config", str(elsewhere)]) == 69
    assert "no play history at" in capsys.readouterr().err
    assert not (tmp_path / "nothing-here").exists(), "a report creates nothing"


def test_render_of_an_empty_range_says_so() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    report = build_report([], [], start, start + timedelta(days=1), "track", now=start)
    assert "no plays and no monitored time" in render(report, "table")


def test_plays_written_while_postgresql_drops_the_connection_are_written_after_it_reconnects(
    postgres_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    import psycopg

    now = [T0]

    def terminate_daemon_connections() -> None:
        database = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))

    play = make_play()

    async def scenario() -> None:
        sink = HistorySink.from_url(postgres_url, ["radio-one"], HistoryConfig(), clock=lambda: now[0])
        await sink.start()
        await sink.publish_event(PlayEvent("play_started", play))
        terminate_daemon_connections()
        await sink.publish_event(PlayEvent("play_ended", play.ended(at(100), 100.5, "evidence_lost")))
        now[0] += timedelta(seconds=10)  # past REOPEN_EVERY: the next call reconnects and catches up
        await sink.checkpoint(Checkpoint("radio-one", at(101), True))
        await sink.close(1.0)

    asyncio.run(scenario())
    store = open_history(postgres_url)
    stored = store.plays(at(-1), at(1))
    store.close()
    assert [(p.play_id, p.end_reason) for p in stored] == [(play.play_id, "evidence_lost")]
    assert "history: cannot record the play" in caplog.text, "the end was written only after reconnecting"
    assert "answers again" in caplog.text


def test_the_retention_runs_at_start_and_says_what_it_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging

    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    store = open_history(url)
    store.record_play(make_play(start_s=0).ended(at(60), 60.5, "track_changed"))
    store.record_play(make_play(start_s=9 * 86400).ended(at(9 * 86400 + 60), 60.5, "track_changed"))
    store.close()

    async def scenario() -> None:
        sink = HistorySink.from_url(url, ["radio-one"], HistoryConfig(retention_days=7),
                                    clock=lambda: at(10 * 86400))
        await sink.start()
        await sink.close(1.0)

    with caplog.at_level(logging.INFO, logger="tunetrace.history.sink"):
        asyncio.run(scenario())
    assert "history retention (7 days): deleted 1 play(s)" in caplog.text
    store = open_history(url)
    assert [p.started_at for p in store.plays(at(-1), at(20 * 86400))] == [at(9 * 86400)]
    store.close()


def test_the_http_api_reads_past_plays_from_the_history_by_overlap(tmp_path: Path) -> None:
    from tunetrace.history.query import HistoryPlayQuery

    url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    store = open_history(url)
    long_ago = make_play(start_s=-3 * 86400.0).ended(at(-3 * 86400.0 + 200), 200.0, "track_changed")
    spanning = make_play(track_id=8, start_s=-100.0).ended(at(100), 200.0, "track_changed")
    other_station = make_play(station="radio-two", track_id=9, start_s=10.0)
    still_open = make_play(track_id=10, start_s=300.0)
    for play in (long_ago, spanning, other_station, still_open):
        store.record_play(play)
    store.close()
    query = HistoryPlayQuery(url)

    assert [p.track_id for p in query.plays("radio-one", at(0), at(50))] == [8]
    assert [p.track_id for p in query.plays(None, at(0), at(400))] == [8, 9, 10]
    assert [p.track_id for p in query.plays("radio-one", at(1000), None)] == [10]  # open: still on
    assert [p.track_id for p in query.plays(None, None, None)] == [7, 8, 9, 10]
