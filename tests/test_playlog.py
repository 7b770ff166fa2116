"""The JSON Lines play log: one valid line per event, durable appends, size rotation."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.fixtures.mqtt import make_event, schema_validator
from tunetrace.config import PlayLogConfig
from tunetrace.events import PlayEvent, StationHealth
from tunetrace.publish.playlog import PlayLog

LOGGED_AT = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def write(log: PlayLog, events: list[PlayEvent]) -> None:
    async def scenario() -> None:
        async with asyncio.timeout(30):
            for event in events:
                await log.publish_event(event)
            await log.close(deadline_s=1.0)

    asyncio.run(scenario())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def new_log(path: Path, max_bytes: int = 1_000_000, backups: int = 3) -> PlayLog:
    return PlayLog(path, max_bytes=max_bytes, backups=backups, clock=lambda: LOGGED_AT)


def test_each_event_is_one_json_line_matching_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "plays.jsonl"
    events = [make_event("radio-one", 1, "play_started"), make_event("radio-one", 1, "play_ended")]
    write(new_log(path), events)
    records = lines(path)
    validator = schema_validator("playlog_line")
    for record, event in zip(records, events, strict=True):
        validator.validate(record)
        assert record == {"logged_at": LOGGED_AT.isoformat(), **event.to_json()}
    assert records[1]["play"]["duration_s"] == 200.0
    assert "«ünïcode»" in path.read_text(encoding="utf-8")  # readable, not \\u-escaped


def test_now_playing_and_health_are_not_logged(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    log = new_log(path)
    health = StationHealth(source_up=True, silent=False, dropped_windows=0, windows_processed=1,
                           last_audio_at=None, reconnects=0)

    async def scenario() -> None:
        await log.publish_now_playing("radio-one", None)
        await log.publish_health("radio-one", health)
        await log.close(deadline_s=1.0)

    asyncio.run(scenario())
    assert not path.exists()


def test_reopening_appends_after_existing_records(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    write(new_log(path), [make_event(index=0)])
    write(new_log(path), [make_event(index=1)])
    assert [r["play"]["play_id"] for r in lines(path)] == ["radio-one-00000", "radio-one-00001"]


def test_a_partial_last_line_from_a_crash_is_closed_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    write(new_log(path), [make_event(index=0)])
    with path.open("ab") as handle:
        handle.write(b'{"logged_at": "2026-03-01T13:00:00+00:00", "ev')  # power cut mid-line
    write(new_log(path), [make_event(index=1)])
    raw = path.read_text(encoding="utf-8").splitlines()
    assert len(raw) == 3
    assert json.loads(raw[2])["play"]["play_id"] == "radio-one-00001"


def test_concurrent_events_are_written_in_call_order(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    log = new_log(path)
    events = [make_event(index=i) for i in range(40)]

    async def scenario() -> None:
        async with asyncio.timeout(30):
            await asyncio.gather(*(log.publish_event(e) for e in events))
            await log.close(deadline_s=1.0)

    asyncio.run(scenario())
    assert [r["event_id"] for r in lines(path)] == [e.event_id for e in events]


def test_rotates_by_size_and_keeps_the_configured_backups(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    max_bytes = 2_000
    events = [make_event(index=i) for i in range(40)]
    line_bytes = len(json.dumps({"logged_at": LOGGED_AT.isoformat(), **events[0].to_json()}))
    write(new_log(path, max_bytes=max_bytes, backups=2), events)

    files = [path.with_name("plays.jsonl.2"), path.with_name("plays.jsonl.1"), path]
    assert all(f.exists() for f in files)
    assert not path.with_name("plays.jsonl.3").exists()
    assert all(f.stat().st_size <= max_bytes for f in files)
    kept = [r["event_id"] for f in files for r in lines(f)]
    # The newest events, contiguous and in order; only whole files of the oldest were dropped.
    assert kept == [e.event_id for e in events[-len(kept):]]
    assert len(kept) >= 2 * (max_bytes // (line_bytes + 1))


def test_zero_backups_starts_the_file_afresh(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    events = [make_event(index=i) for i in range(20)]
    write(new_log(path, max_bytes=2_000, backups=0), events)
    assert [p.name for p in tmp_path.iterdir()] == ["plays.jsonl"]
    kept = [r["event_id"] for r in lines(path)]
    assert kept and kept == [e.event_id for e in events[-len(kept):]]


def test_a_line_larger_than_the_limit_still_gets_written(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    write(new_log(path, max_bytes=100, backups=1), [make_event(index=0), make_event(index=1)])
    assert len(lines(path)) == 1 and len(lines(path.with_name("plays.jsonl.1"))) == 1


def test_default_path_is_in_the_data_dir(tmp_path: Path) -> None:
    assert PlayLog.from_config(PlayLogConfig(), tmp_path).path == tmp_path / "plays.jsonl"
    custom = tmp_path / "elsewhere.jsonl"
    assert PlayLog.from_config(PlayLogConfig(path=custom), tmp_path).path == custom
