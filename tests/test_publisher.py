"""MQTT publisher against a real mosquitto: retained state, QoS 1 events, last will, HA discovery,
credentials and TLS, broker outages and restarts with the durable outbox.

Run as a script (``python tests/test_publisher.py MODE ...``) it is the child process the
last-will and crash tests SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from tests.fixtures.mqtt import (
    MQTT_PASSWORD,
    WAIT_S,
    Mosquitto,
    Received,
    make_event,
    make_play,
    schema_validator,
    subscribed,
)
from tests.fixtures.ports import free_loopback_port
from tunetrace.backoff import Backoff, BackoffPolicy
from tunetrace.config import MqttConfig
from tunetrace.events import StationHealth
from tunetrace.publish.mqtt import MqttPublisher
from tunetrace.publish.topics import Topics

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coro

    return asyncio.run(bounded())


def unique_prefix() -> str:
    return f"tt-{uuid.uuid4().hex[:8]}"


def config_for(broker: Mosquitto, prefix: str, **overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "topic_prefix": prefix,
        "keepalive_s": 5,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.3,
    }
    values.update(overrides)
    return MqttConfig(**values)


@asynccontextmanager
async def running(publisher: MqttPublisher, *, connected: bool = True) -> AsyncIterator[MqttPublisher]:
    await publisher.start()
    try:
        if connected:
            async with asyncio.timeout(WAIT_S):
                await publisher.wait_connected()
        yield publisher
    finally:
        await publisher.close(deadline_s=2.0)


async def settled(publisher: MqttPublisher) -> None:
    """Wait until the broker acknowledged every event and the latest value of every retained topic."""
    await until(lambda: publisher.stats().pending_events == 0 and publisher.stats().pending_state == 0)


async def retained(broker: Mosquitto, topic: str) -> Received:
    """What a newly connecting client gets for ``topic`` (must be retained)."""
    async with subscribed(broker, topic) as late:
        await late.wait_for(lambda r: any(m.topic == topic for m in r))
        return late.on(topic)[-1]


async def until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polling state owned by the code under test
            await asyncio.sleep(0.01)


# -- retained state and events -----------------------------------------------------------------------


def test_now_playing_is_retained_and_nothing_playing_is_an_explicit_payload(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    topics = Topics(prefix)
    validator = schema_validator("now_playing")

    async def scenario() -> None:
        publisher = MqttPublisher(config_for(mosquitto, prefix), tmp_path / "outbox.db", ["radio-one"])
        async with running(publisher), subscribed(mosquitto, topics.now_playing("radio-one")) as live:
            await settled(publisher)
            initial = await retained(mosquitto, topics.now_playing("radio-one"))
            assert initial.retain and initial.json()["playing"] is False
            validator.validate(initial.json())

            play = make_play("radio-one", 3)
            await publisher.publish_now_playing("radio-one", play)
            await live.wait_for(lambda r: any(m.json()["playing"] for m in r))
            late = await retained(mosquitto, topics.now_playing("radio-one"))
            validator.validate(late.json())
            assert late.retain and late.qos == 1
            assert late.json()["title"] == play.title
            assert late.json()["artist"] == play.artist
            assert late.json()["play"] == play.to_json()

            await publisher.publish_now_playing("radio-one", None)
            await live.wait_for(lambda r: not r[-1].json()["playing"])
            nothing = (await retained(mosquitto, topics.now_playing("radio-one"))).json()
            validator.validate(nothing)
            assert nothing["playing"] is False
            assert nothing["title"] is None and nothing["play"] is None

    run(scenario())


def test_play_events_are_qos1_not_retained_and_match_the_schema(mosquitto: Mosquitto, tmp_path: Path) -> None:
    prefix = unique_prefix()
    validator = schema_validator("event")
    events = [make_event("radio-one", 7, "play_started"), make_event("radio-one", 7, "play_ended")]

    async def scenario() -> None:
        publisher = MqttPublisher(config_for(mosquitto, prefix), tmp_path / "outbox.db", ["radio-one"])
        async with subscribed(mosquitto, f"{prefix}/+/events") as sub, running(publisher):
            for event in events:
                await publisher.publish_event(event)
            await sub.wait_for(lambda r: len(r) >= 2)
            await until(lambda: publisher.stats().delivered_events == 2)
            assert publisher.stats().pending_events == 0
        for message, event in zip(sub.received, events, strict=True):
            assert message.topic == f"{prefix}/radio-one/events"
            assert message.qos == 1 and not message.retain
            validator.validate(message.json())
            assert message.json() == event.to_json()

    run(scenario())


def test_health_is_retained_per_station(mosquitto: Mosquitto, tmp_path: Path) -> None:
    prefix = unique_prefix()
    topics = Topics(prefix)
    health = StationHealth(source_up=True, silent=True, dropped_windows=4, windows_processed=120,
                           last_audio_at=datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC), reconnects=1)

    async def scenario() -> None:
        publisher = MqttPublisher(config_for(mosquitto, prefix), tmp_path / "outbox.db", ["a", "b"])
        async with running(publisher), subscribed(mosquitto, topics.health("b")) as sub:
            await publisher.publish_health("b", health)
            await sub.wait_for(lambda r: len(r) >= 1)
            payload = (await retained(mosquitto, topics.health("b"))).json()
        schema_validator("health").validate(payload)
        assert payload["state"] == "silent"
        assert payload["dropped_windows"] == 4 and payload["station"] == "b"

    run(scenario())


def test_home_assistant_discovery_makes_a_bridge_and_each_station_a_device(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    prefix = unique_prefix()
    topics = Topics(prefix)
    stations = ["radio-one", "jazz_fm"]
    validator = schema_validator("discovery_sensor")
    expected = 1 + 5 * len(stations)  # bridge connectivity; title, artist, confidence, source, play

    async def scenario() -> list[Received]:
        publisher = MqttPublisher(config_for(mosquitto, prefix), tmp_path / "outbox.db", stations,
                                  display_names={"jazz_fm": "Jazz FM"})
        config_topics = topics.discovery_wildcard
        async with running(publisher), subscribed(mosquitto, config_topics) as live:
            await live.wait_for(lambda r: len(r) >= expected)
            # Retained: a Home Assistant that starts later still finds them.
            async with subscribed(mosquitto, config_topics) as late:
                await late.wait_for(lambda r: len(r) >= expected)
                return late.received

    received = run(scenario())
    configs = {m.topic: m.json() for m in received}
    assert all(m.retain for m in received)
    assert len(configs) == expected
    for config in configs.values():
        validator.validate(config)
    node = topics.node_id
    bridge = configs[f"homeassistant/binary_sensor/{node}/bridge_connectivity/config"]
    assert bridge["state_topic"] == f"{prefix}/status"
    assert (bridge["payload_on"], bridge["payload_off"]) == ("online", "offline")
    assert bridge["device_class"] == "connectivity" and bridge["entity_category"] == "diagnostic"
    assert "availability" not in bridge  # it must show "disconnected", not "unavailable"
    bridge_id = bridge["device"]["identifiers"][0]
    for station in stations:
        title = configs[f"homeassistant/sensor/{node}/{station}_title/config"]
        assert title["state_topic"] == title["json_attributes_topic"] == f"{prefix}/{station}/now_playing"
        assert title["device"]["via_device"] == bridge_id
        # A dead station's title is unavailable, not "unknown" like nothing recognised.
        assert title["availability_mode"] == "all"
        availability = [a["topic"] for a in title["availability"]]
        assert availability == [f"{prefix}/status", f"{prefix}/{station}/health"]
        confidence = configs[f"homeassistant/sensor/{node}/{station}_confidence/config"]
        assert confidence["device"]["identifiers"] == title["device"]["identifiers"]
        assert confidence["unit_of_measurement"] == "%"
        source = configs[f"homeassistant/sensor/{node}/{station}_source/config"]
        assert source["device_class"] == "enum" and source["entity_category"] == "diagnostic"
        assert source["options"] == ["ok", "silent", "catalog_down", "down"]
        assert source["state_topic"] == f"{prefix}/{station}/health"
        play = configs[f"homeassistant/event/{node}/{station}_play/config"]
        assert play["state_topic"] == f"{prefix}/{station}/events"
        assert "play_started" in play["event_types"]
    names = {c["device"]["name"] for c in configs.values()}
    assert names == {f"tunetrace ({prefix})", "radio-one", "Jazz FM"}
    assert len({c["unique_id"] for c in configs.values()}) == expected


def test_discovery_configs_of_a_removed_station_are_cleared_at_start(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    prefix = unique_prefix()
    topics = Topics(prefix)
    other = Topics(unique_prefix())  # another daemon's node: never touched

    async def scenario() -> tuple[list[Received], list[Received]]:
        ours_config, theirs_config = config_for(mosquitto, prefix), config_for(mosquitto, other.prefix)
        async with running(MqttPublisher(ours_config, tmp_path / "a.db", ["old-fm", "kept"])) as p:
            await settled(p)
        async with running(MqttPublisher(theirs_config, tmp_path / "b.db", ["old-fm"])) as p:
            await settled(p)
        # The config now lists only "kept": the next start removes old-fm's entities.
        async with running(MqttPublisher(ours_config, tmp_path / "a.db", ["kept"])) as p:
            await settled(p)
        async with subscribed(mosquitto, topics.discovery_wildcard) as ours, \
                subscribed(mosquitto, other.discovery_wildcard) as theirs:
            await ours.wait_for(lambda r: len(r) >= 6)
            await theirs.wait_for(lambda r: len(r) >= 6)
            await asyncio.sleep(0.3)
            return ours.received, theirs.received

    ours, theirs = run(scenario())
    left = {m.topic for m in ours if m.payload}
    assert len(left) == 6, sorted(left)  # the bridge and kept's five
    assert not [t for t in left if "/old-fm_" in t]
    assert all("/kept_" in t or "/bridge_" in t for t in left)
    assert len({m.topic for m in theirs if m.payload}) == 6, "another daemon's configs stay"


def test_play_event_template_renders_an_event_type_home_assistant_accepts() -> None:
    """The event entity's template, rendered with Jinja2 as Home Assistant would (``to_json`` added)."""
    import json

    import jinja2

    from tunetrace.publish.topics import discovery_configs, encode

    topics = Topics("tt")
    config = discovery_configs(topics, ["radio-one"])[topics.discovery("radio-one_play", "event")]
    environment = jinja2.Environment(autoescape=False)
    environment.filters["to_json"] = json.dumps
    event = make_event("radio-one", 3)
    rendered = environment.from_string(config["value_template"]).render(
        value_json=json.loads(encode(event.to_json())))
    data = json.loads(rendered)
    assert data["event_type"] == "play_started" and data["event_type"] in config["event_types"]
    assert data["title"] == event.play.title and data["track_id"] == event.play.track_id


def test_discovery_can_be_turned_off(mosquitto: Mosquitto, tmp_path: Path) -> None:
    prefix = unique_prefix()

    async def scenario() -> list[Received]:
        config = config_for(mosquitto, prefix, discovery=False)
        publisher = MqttPublisher(config, tmp_path / "outbox.db", ["radio-one"])
        async with running(publisher), subscribed(mosquitto, "homeassistant/#", f"{prefix}/#") as sub:
            await sub.wait_for(lambda r: any(m.topic.endswith("/now_playing") for m in r))
            return sub.received

    assert not [m for m in run(scenario()) if m.topic.startswith("homeassistant/")]


# -- status and last will ------------------------------------------------------------------------------


def test_status_is_online_then_offline_retained_at_a_clean_close(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    status = Topics(prefix).status

    async def scenario() -> None:
        publisher = MqttPublisher(config_for(mosquitto, prefix), tmp_path / "outbox.db", ["radio-one"])
        async with running(publisher):
            online = await retained(mosquitto, status)
            assert online.payload == b"online" and online.retain
        offline = await retained(mosquitto, status)
        assert offline.payload == b"offline" and offline.retain

    run(scenario())


def _spawn_child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "daemon"), str(REPO)])}
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


async def _read_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), WAIT_S)
    if not line:
        assert child.stderr is not None
        raise AssertionError(f"child exited early: {child.stderr.read()}")
    return line.strip()


def _kill(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait(timeout=WAIT_S)


def test_last_will_marks_offline_when_the_process_is_killed(mosquitto: Mosquitto, tmp_path: Path) -> None:
    prefix = unique_prefix()
    status = Topics(prefix).status

    async def scenario() -> None:
        child = _spawn_child("connect", str(mosquitto.port), prefix, str(tmp_path / "outbox.db"))
        try:
            assert await _read_line(child) == "connected"
            async with subscribed(mosquitto, status) as sub:
                await sub.wait_for(lambda r: [m.payload for m in r] == [b"online"])
                killed_at = time.monotonic()
                _kill(child)
                await sub.wait_for(lambda r: r[-1].payload == b"offline", timeout_s=5.0)
                will_latency_s = time.monotonic() - killed_at
            assert (await retained(mosquitto, status)).payload == b"offline"
            print(f"last will arrived {will_latency_s * 1000:.0f} ms after SIGKILL")
        finally:
            _kill(child)

    run(scenario())


# -- credentials and TLS -------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["password", "tls"])
def test_connects_with_username_password_and_tls(mosquitto: Mosquitto, tmp_path: Path, listener: str) -> None:
    prefix = unique_prefix()
    overrides: dict[str, Any] = {"username": mosquitto.username, "password": SecretStr(mosquitto.password)}
    if listener == "tls":
        overrides |= {"port": mosquitto.tls_port, "tls": True, "ca_file": mosquitto.ca_file}
    else:
        overrides |= {"port": mosquitto.password_port}
    event = make_event()

    async def scenario() -> None:
        config = config_for(mosquitto, prefix, **overrides)
        publisher = MqttPublisher(config, tmp_path / "o.db", ["radio-one"])
        async with subscribed(mosquitto, f"{prefix}/#") as sub, running(publisher):
            await publisher.publish_event(event)
            await sub.wait_for(lambda r: any(m.topic.endswith("/events") for m in r))
        assert [m.json() for m in sub.received if m.topic.endswith("/events")] == [event.to_json()]

    run(scenario())


def test_tls_with_an_untrusted_certificate_does_not_connect(mosquitto: Mosquitto, tmp_path: Path) -> None:
    # No ca_file: the system trust store does not know the test CA.
    config = config_for(mosquitto, unique_prefix(), port=mosquitto.tls_port, tls=True,
                        username=mosquitto.username, password=SecretStr(mosquitto.password))

    async def scenario() -> None:
        publisher = MqttPublisher(config, tmp_path / "o.db", ["radio-one"])
        async with running(publisher, connected=False):
            await asyncio.sleep(0.5)
            assert not publisher.stats().connected
            assert publisher.stats().connects == 0

    run(scenario())


def test_wrong_password_is_reported_clearly_and_retried_with_backoff(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="mqtt")
    wrong = "not-the-" + MQTT_PASSWORD
    config = config_for(mosquitto, unique_prefix(), port=mosquitto.password_port,
                        username=mosquitto.username, password=SecretStr(wrong))

    async def scenario() -> None:
        publisher = MqttPublisher(config, tmp_path / "o.db", ["radio-one"])
        async with running(publisher, connected=False):
            await until(lambda: len(_refusals(caplog)) >= 3)
            assert not publisher.stats().connected

    run(scenario())
    refusals = _refusals(caplog)
    assert all(r.levelno == logging.ERROR for r in refusals)
    message = refusals[0].getMessage()
    assert "refused the login as 'tester'" in message and "mqtt.password" in message
    assert "Not authorized" in message
    delays = [float(r.getMessage().rsplit("retrying in ", 1)[1].split(" s")[0]) for r in refusals]
    assert delays[1] > delays[0] / 2 and max(delays) <= config.reconnect_max_s
    assert wrong not in caplog.text and MQTT_PASSWORD not in caplog.text


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "refused the login" in r.getMessage()]


def test_password_never_appears_in_logs(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="mqtt")  # paho's packet log (aiomqtt sets it to WARNING)
    config = config_for(mosquitto, unique_prefix(), port=mosquitto.password_port,
                        username=mosquitto.username, password=SecretStr(MQTT_PASSWORD))

    async def scenario() -> None:
        publisher = MqttPublisher(config, tmp_path / "o.db", ["radio-one"])
        async with running(publisher):
            await publisher.publish_event(make_event())
            await until(lambda: publisher.stats().delivered_events == 1)

    run(scenario())
    assert any("Sending CONNECT" in r.getMessage() for r in caplog.records)  # debug logging was on
    assert MQTT_PASSWORD not in caplog.text
    assert MQTT_PASSWORD not in repr(config) and MQTT_PASSWORD not in str(config)


def test_an_unreachable_broker_is_warned_about_once_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tunetrace.publish.mqtt")
    config = MqttConfig(
        host="127.0.0.1", port=free_loopback_port(), reconnect_initial_s=0.02, reconnect_max_s=0.05
    )

    def attempts(level: int) -> int:
        return sum("unreachable" in r.getMessage() and r.levelno == level for r in caplog.records)

    async def scenario() -> None:
        publisher = MqttPublisher(config, tmp_path / "o.db", ["radio-one"])
        async with running(publisher, connected=False):
            await until(lambda: attempts(logging.DEBUG) >= 3)

    run(scenario())
    assert attempts(logging.WARNING) == 1


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(BackoffPolicy(initial_s=1.0, max_s=8.0))
    delays = [backoff.next_delay_s() for _ in range(10)]
    for attempt, delay in enumerate(delays):
        cap = min(8.0, 2.0**attempt)
        assert cap / 2 <= delay <= cap
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jittered, not a fixed sleep
    backoff.reset()
    assert backoff.next_delay_s() <= 1.0


# -- outages and restarts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outage_s", [pytest.param(3.0, id="3s"), pytest.param(30.0, id="30s", marks=pytest.mark.slow)]
)
def test_events_during_a_broker_outage_arrive_once_in_order(
    mosquitto: Mosquitto, tmp_path: Path, outage_s: float
) -> None:
    prefix = unique_prefix()
    event_period_s = 0.05
    sent: list[str] = []

    async def scenario() -> None:
        publisher = MqttPublisher(config_for(mosquitto, prefix), tmp_path / "outbox.db", ["radio-one"])
        producing = asyncio.Event()
        producing.set()
        paused = asyncio.Event()
        stop = asyncio.Event()

        async def produce() -> None:
            index = 0
            while not stop.is_set():
                if not producing.is_set():
                    paused.set()
                    await producing.wait()
                    paused.clear()
                event = make_event("radio-one", index, "play_started" if index % 2 == 0 else "play_ended")
                await publisher.publish_event(event)
                sent.append(event.event_id)
                index += 1
                await asyncio.sleep(event_period_s)

        async with subscribed(mosquitto, f"{prefix}/+/events", persistent=True) as sub, running(publisher):
            producer = asyncio.create_task(produce())
            await asyncio.sleep(0.5)
            # Stop the broker between two events with nothing in flight on either leg (a message
            # whose PUBACK the broker never read is redelivered by QoS 1 design), so that
            # "exactly once" tests the outbox and not that race.
            producing.clear()
            await asyncio.wait_for(paused.wait(), WAIT_S)
            await sub.wait_for(lambda r: len(r) >= len(sent))
            await settled(publisher)
            await asyncio.sleep(0.2)  # the subscriber's last PUBACK reaches the broker
            before_outage = len(sent)
            await asyncio.to_thread(mosquitto.stop)
            producing.set()
            await asyncio.sleep(outage_s)
            queued = publisher.stats().pending_events
            await asyncio.to_thread(mosquitto.start)
            await asyncio.sleep(0.5)
            stop.set()
            await producer
            await sub.wait_for(lambda r: len(r) >= len(sent), timeout_s=30.0)
            await asyncio.sleep(0.3)  # a duplicate would arrive now
            assert publisher.stats().connects == 2
        received = [m.json()["event_id"] for m in sub.received]
        assert received == sent
        assert queued >= (len(sent) - before_outage) // 2, "events produced offline waited in the outbox"
        print(f"{len(sent)} events, {queued} queued during a {outage_s:.0f} s outage, all delivered once")

    run(scenario(), timeout_s=outage_s + 60)


def test_undelivered_events_are_delivered_after_a_restart(mosquitto: Mosquitto, tmp_path: Path) -> None:
    prefix = unique_prefix()
    outbox = tmp_path / "outbox.db"
    events = [make_event("radio-one", i) for i in range(5)]

    async def scenario() -> None:
        mosquitto.stop()
        first = MqttPublisher(config_for(mosquitto, prefix), outbox, ["radio-one"])
        async with running(first, connected=False):
            for event in events:
                await first.publish_event(event)
            assert first.stats().pending_events == 5
        mosquitto.start()
        second = MqttPublisher(config_for(mosquitto, prefix), outbox, ["radio-one"])
        async with subscribed(mosquitto, f"{prefix}/+/events") as sub, running(second):
            await sub.wait_for(lambda r: len(r) >= 5)
            await until(lambda: second.stats().pending_events == 0)
        assert [m.json() for m in sub.received] == [e.to_json() for e in events]

    run(scenario())


def test_events_of_a_killed_process_are_delivered_by_the_next_one(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    outbox = tmp_path / "outbox.db"
    dead_port = free_loopback_port()  # nothing listens: the child can only queue

    async def scenario() -> None:
        child = _spawn_child("queue", str(dead_port), prefix, str(outbox), "4")
        try:
            assert await _read_line(child) == "queued 4"
        finally:
            _kill(child)
        publisher = MqttPublisher(config_for(mosquitto, prefix), outbox, ["radio-one"])
        async with subscribed(mosquitto, f"{prefix}/+/events") as sub, running(publisher):
            await sub.wait_for(lambda r: len(r) >= 4)
        assert [m.json()["play"]["play_id"] for m in sub.received] == [f"radio-one-{i:05d}" for i in range(4)]

    run(scenario())


def test_close_without_a_broker_returns_promptly_and_keeps_events(tmp_path: Path) -> None:
    config = MqttConfig(
        host="127.0.0.1", port=free_loopback_port(), reconnect_initial_s=0.05, reconnect_max_s=0.1
    )

    async def scenario() -> float:
        publisher = MqttPublisher(config, tmp_path / "outbox.db", ["radio-one"])
        await publisher.start()
        await publisher.publish_event(make_event())
        started = time.monotonic()
        await publisher.close(deadline_s=3.0)
        return time.monotonic() - started

    assert run(scenario()) < 1.0
    # The event waits for the next start.
    from tunetrace.publish.outbox import Outbox

    with Outbox(tmp_path / "outbox.db", max_events=10) as outbox:
        assert len(outbox) == 1


def test_close_gives_up_on_a_hung_broker_within_its_deadline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    prefix = unique_prefix()

    async def scenario() -> float:
        publisher = MqttPublisher(config_for(mosquitto, prefix), tmp_path / "outbox.db", ["radio-one"])
        await publisher.start()
        async with asyncio.timeout(WAIT_S):
            await publisher.wait_connected()
        await settled(publisher)
        mosquitto.pause()
        try:
            for index in range(3):
                await publisher.publish_event(make_event(index=index))
            started = time.monotonic()
            await publisher.close(deadline_s=1.0)
            return time.monotonic() - started
        finally:
            mosquitto.resume()

    assert run(scenario()) < 1.0 + 1.0 + 0.5  # deadline + goodbye grace + scheduling slack
    from tunetrace.publish.outbox import Outbox

    with Outbox(tmp_path / "outbox.db", max_events=10) as outbox:
        assert len(outbox) == 3  # kept for the next start


def test_publish_before_start_is_an_error(tmp_path: Path) -> None:
    publisher = MqttPublisher(MqttConfig(), tmp_path / "o.db", ["radio-one"])
    with pytest.raises(RuntimeError, match="start"):
        run(publisher.publish_event(make_event()))


# -- child process -------------------------------------------------------------------------------------


async def _child(mode: str, port: str, prefix: str, outbox: str, count: str = "0") -> None:
    config = MqttConfig(host="127.0.0.1", port=int(port), topic_prefix=prefix, keepalive_s=5,
                        reconnect_initial_s=0.05, reconnect_max_s=0.2)
    publisher = MqttPublisher(config, Path(outbox), ["radio-one"])
    await publisher.start()
    if mode == "connect":
        await publisher.wait_connected()
        print("connected", flush=True)
    else:
        for index in range(int(count)):
            await publisher.publish_event(make_event("radio-one", index))
        print(f"queued {count}", flush=True)
    await asyncio.sleep(3600)  # until SIGKILLed


if __name__ == "__main__":
    asyncio.run(_child(*sys.argv[1:]))
