"""The daemon as deployed: a real Milvus server for the catalog and a real mosquitto for its output.

A station plays a real catalog clip in a loop at real-time pace; the play arrives over MQTT as a
consumer sees it.  Then the Milvus server is stopped for longer than the tracker's ``end_after_s``
and started again: the daemon keeps running, reports the outage in its health, ends the open play
(no evidence while nothing can be searched) and recognises the track again once the server is back.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.audio import Clip
from tests.fixtures.milvus import MilvusServer, build_catalog, unique_prefix
from tests.fixtures.mqtt import Mosquitto, Received, schema_validator, subscribed
from tunetrace.config import parse_config
from tunetrace.publish.topics import Topics
from tunetrace.service import Service

pytestmark = [pytest.mark.slow, pytest.mark.milvus_server]

STATION = "live"
FIRST_PLAY_S = 60.0
RECOVERY_S = 180.0
"""Stopping, restarting and reloading the server's collections takes tens of seconds here."""


def payloads(received: list[Received], topic: str) -> list[dict[str, Any]]:
    return [m.json() for m in received if m.topic == topic]


def plays_started(received: list[Received], topic: str) -> int:
    return sum(p["event"] == "play_started" for p in payloads(received, topic))


def test_plays_reach_mqtt_through_a_sharded_milvus_server_and_a_server_restart_is_survived(
    milvus_server: MilvusServer, mosquitto: Mosquitto, real_clips: list[Clip], tmp_path: Path,
) -> None:
    prefix = unique_prefix("live")
    # Two shards: the layout a cluster spreads over its data nodes (docs/scaling.md).
    catalog = build_catalog(
        tmp_path / "catalog", [c.path for c in real_clips], milvus_server.uri, prefix, {"shards": "2"},
    )
    with catalog.open() as store:
        assert store.vector_shards() == 2
    clip = real_clips[0]
    track_id = catalog.tracks[clip.path].track_id
    topic_prefix = f"tt-{uuid.uuid4().hex[:8]}"
    config = parse_config({
        "data_dir": str(tmp_path / "data"),
        "milvus": {"uri": milvus_server.uri, "collection_prefix": prefix, "timeout_s": 5, "shards": 2},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "topic_prefix": topic_prefix,
                 "reconnect_initial_s": 0.05, "reconnect_max_s": 0.5},
        "service": {"health_interval_s": 1.0},
        "stations": [{"name": STATION, "source": {"url": str(clip.path), "realtime": True, "loop": True}}],
    })
    topics = Topics(topic_prefix)
    events_topic, health_topic = topics.events(STATION), topics.health(STATION)
    outage_s = config.tracker.end_after_s + 2.0
    service = Service(config)  # the configured sinks: the play log and the MQTT publisher
    received: list[Received] = []

    async def scenario() -> None:
        async with subscribed(mosquitto, events_topic, health_topic) as consumer:
            task = asyncio.create_task(service.run())
            try:
                await consumer.wait_for(lambda r: plays_started(r, events_topic) >= 1, FIRST_PLAY_S)
                await asyncio.to_thread(milvus_server.stop)
                await asyncio.sleep(outage_s)
                await asyncio.to_thread(milvus_server.start)
                await consumer.wait_for(lambda r: plays_started(r, events_topic) >= 2, RECOVERY_S)
                assert not task.done(), "the service kept running through the Milvus outage"
            finally:
                service.request_stop()
                async with asyncio.timeout(15):
                    assert await task == 0
            await consumer.wait_for(lambda r: len(payloads(r, events_topic)) >= 4)
            received.extend(consumer.received)

    asyncio.run(scenario())

    events = payloads(received, events_topic)
    event_schema = schema_validator("event")
    for event in events:
        event_schema.validate(event)
    assert [(e["event"], e["play"]["track_id"]) for e in events[:4]] == [
        (kind, track_id) for _ in range(2) for kind in ("play_started", "play_ended")
    ]
    assert events[0]["play"]["title"] == events[2]["play"]["title"] != ""
    health = payloads(received, health_topic)
    health_schema = schema_validator("health")
    for payload in health:
        health_schema.validate(payload)
    states = [h["state"] for h in health]
    assert "catalog_down" in states, "the outage was reported in health"
    assert states[-1] != "catalog_down" and health[-1]["catalog_up"]
    assert health[-1]["windows_processed"] > 0
