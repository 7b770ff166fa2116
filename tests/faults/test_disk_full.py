"""A full disk under the MQTT outbox: no event is lost, each is counted and reported, and the real
publisher delivers them all, in order, to a real mosquitto, across a broker outage during the
disk-full spell."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.faults.disk import SmallDisk, small_disk  # noqa: F401 - the fixture
from tests.fixtures.mqtt import Mosquitto, make_event, schema_validator, subscribed
from tunetrace.config import MqttConfig
from tunetrace.events import StationHealth
from tunetrace.publish.mqtt import MqttPublisher
from tunetrace.publish.playlog import PlayLog

WAIT_S = 30.0
STATION = "radio-one"


async def _until(condition: object, timeout_s: float = WAIT_S) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polling state owned by the code under test
            await asyncio.sleep(0.02)


def _health() -> StationHealth:
    return StationHealth(source_up=True, silent=False, dropped_windows=0, windows_processed=1,
                         last_audio_at=None, reconnects=0)


async def _scenario(
    broker: Mosquitto, disk: SmallDisk,
) -> tuple[list[str], list[str], MqttPublisher, dict[str, int]]:
    config = MqttConfig(
        host=broker.host, port=broker.port, topic_prefix="tt-full", keepalive_s=5,
        # The subscriber (0.05 s) is back before the publisher (1 s) after the outage.
        reconnect_initial_s=1.0, reconnect_max_s=1.0, discovery=False,
    )
    publisher = MqttPublisher(config, disk.path / "outbox.sqlite3", [STATION])
    events = [make_event(STATION, i, "play_started" if i % 2 == 0 else "play_ended") for i in range(15)]
    events_topic = publisher.topics.events(STATION)
    health_topic = publisher.topics.health(STATION)
    async with subscribed(broker, events_topic, health_topic) as consumer:
        await publisher.start()
        async with asyncio.timeout(WAIT_S):
            await publisher.wait_connected()
        disk.fill()
        broker.stop()  # the broker goes away during the disk-full spell
        for event in events[:10]:
            await publisher.publish_event(event)
        during = publisher.stats()
        snapshot = {"unsaved": during.unsaved_events, "dropped": during.dropped_events,
                    "pending": during.pending_events}
        broker.start()
        await consumer.wait_for(lambda r: sum(m.topic == events_topic for m in r) >= 10, WAIT_S)
        disk.free()  # space again: new events go through the outbox
        for event in events[10:]:
            await publisher.publish_event(event)
        await consumer.wait_for(lambda r: sum(m.topic == events_topic for m in r) >= 15, WAIT_S)
        await _until(lambda: publisher.stats().pending_events == 0)
        await publisher.publish_health(STATION, _health())
        await consumer.wait_for(lambda r: any(
            m.topic == health_topic and m.json()["events_unsaved"] == 0 for m in r), WAIT_S)
        await publisher.close(deadline_s=2.0)
        received = [m.json()["event_id"] for m in consumer.on(events_topic)]
        health = [m.json() for m in consumer.on(health_topic)]
    for payload in health:
        schema_validator("health").validate(payload)
    return [e.event_id for e in events], received, publisher, snapshot


def test_a_full_disk_during_a_broker_outage_loses_no_event(
    mosquitto: Mosquitto, small_disk: SmallDisk, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    with caplog.at_level(logging.INFO, logger="tunetrace"):
        sent, received, publisher, during = asyncio.run(_scenario(mosquitto, small_disk))
    assert received == sent, "every event, in order, no duplicate"
    assert during["unsaved"] >= 1, f"the disk really was full: {during}"
    assert during["dropped"] == 0
    assert during["pending"] == 10
    final = publisher.stats()
    assert (final.dropped_events, final.unsaved_events, final.delivered_events) == (0, 0, 15)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None, "one line, no traceback"
    assert "cannot write the MQTT outbox" in errors[0].getMessage()
    assert "free space in" in errors[0].getMessage()


def test_unsaved_events_beyond_the_bound_are_dropped_oldest_first_and_counted(
    small_disk: SmallDisk,  # noqa: F811
) -> None:
    async def scenario() -> tuple[int, int, int]:
        config = MqttConfig(host="127.0.0.1", port=9, outbox_max_events=10, discovery=False,
                            reconnect_initial_s=5.0, reconnect_max_s=5.0)
        publisher = MqttPublisher(config, small_disk.path / "outbox.sqlite3", [STATION])
        await publisher.start()
        small_disk.fill()
        for i in range(25):
            await publisher.publish_event(make_event(STATION, i))
        stats = publisher.stats()
        await publisher.close(deadline_s=0.5)
        return stats.pending_events, stats.dropped_events, stats.unsaved_events

    pending, dropped, unsaved = asyncio.run(scenario())
    assert 1 <= unsaved <= 10
    assert dropped + pending == 25, "each event is either waiting or counted as dropped"
    assert dropped >= 5


def test_the_play_log_on_a_full_disk_keeps_every_line_once_in_order_and_whole(
    small_disk: SmallDisk, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    log_path = small_disk.path / "plays.jsonl"

    async def scenario() -> tuple[int, list[str]]:
        playlog = PlayLog(log_path, max_bytes=10_000_000, backups=1)
        events = [make_event(STATION, i) for i in range(30)]
        await playlog.publish_event(events[0])
        small_disk.fill()
        for event in events[1:20]:
            await playlog.publish_event(event)
        waiting = playlog.unwritten_lines
        small_disk.free()
        await playlog.publish_health(STATION, _health())  # the retry tick
        for event in events[20:]:
            await playlog.publish_event(event)
        await playlog.close(1.0)
        return waiting, [e.event_id for e in events]

    with caplog.at_level(logging.INFO, logger="tunetrace"):
        waiting, sent = asyncio.run(scenario())
    lines = log_path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends with a whole line"
    logged = [json.loads(line)["event_id"] for line in lines[:-1]]
    assert waiting >= 1, "the disk really refused lines"
    assert logged == sent, "each line once, in order, none lost, none partial"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "cannot write the play log" in errors[0].getMessage()
