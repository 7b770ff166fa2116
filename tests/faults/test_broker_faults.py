"""Broker-side faults that retrying cannot fix must be reported loudly every time, with the fix."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.fixtures.mqtt import Mosquitto
from tunetrace.config import MqttConfig
from tunetrace.publish.mqtt import MqttPublisher


def test_an_untrusted_broker_certificate_is_an_error_on_every_attempt_naming_ca_file(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """It used to be "unreachable" once, then only DEBUG: a silent, permanent outage."""
    config = MqttConfig(
        host=mosquitto.host, port=mosquitto.tls_port, tls=True, username=mosquitto.username,
        password=SecretStr(mosquitto.password), reconnect_initial_s=0.1, reconnect_max_s=0.2,
        discovery=False,  # no ca_file: the system trust store does not know the test CA
    )

    async def scenario() -> bool:
        publisher = MqttPublisher(config, tmp_path / "outbox.sqlite3", ["radio-one"])
        await publisher.start()
        await asyncio.sleep(1.5)
        connected = publisher.stats().connected
        await publisher.close(deadline_s=1.0)
        return connected

    with caplog.at_level(logging.DEBUG, logger="tunetrace"):
        connected = asyncio.run(scenario())
    assert not connected
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) >= 3, errors
    assert all("TLS handshake failed" in m and "mqtt.ca_file" in m for m in errors), errors
    assert all("certificate" in m for m in errors), errors
    assert not any("unreachable" in r.getMessage() for r in caplog.records)
