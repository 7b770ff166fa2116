"""MQTT topics and payloads as pure functions: what the daemon publishes, and nothing of how.

Documented in ``docs/mqtt.md`` and pinned by the JSON Schemas in ``tunetrace/schemas/``; the
connection that publishes them lives in ``publish.mqtt``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tunetrace import __version__
from tunetrace.events import Play, StationHealth

ONLINE = b"online"
OFFLINE = b"offline"


@dataclass(frozen=True)
class Topics:
    """Every topic the daemon publishes, derived from ``topic_prefix`` and ``discovery_prefix``."""

    prefix: str
    discovery_prefix: str = "homeassistant"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def now_playing(self, station: str) -> str:
        return f"{self.prefix}/{station}/now_playing"

    def events(self, station: str) -> str:
        return f"{self.prefix}/{station}/events"

    def health(self, station: str) -> str:
        return f"{self.prefix}/{station}/health"

    @property
    def node_id(self) -> str:
        """Home Assistant node id: the prefix with characters HA rejects replaced by ``_``."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.prefix)

    def discovery(self, object_id: str) -> str:
        return f"{self.discovery_prefix}/sensor/{self.node_id}/{object_id}/config"


def now_playing_payload(station: str, play: Play | None, updated_at: datetime) -> dict[str, Any]:
    """Retained now-playing state; ``playing: false`` with null fields is the explicit "nothing"."""
    return {
        "station": station,
        "playing": play is not None,
        "title": play.title if play else None,
        "artist": play.artist if play else None,
        "album": play.album if play else None,
        "confidence": round(play.confidence, 3) if play else None,
        "play": play.to_json() if play else None,
        "updated_at": updated_at.isoformat(),
    }


def health_state(health: StationHealth) -> str:
    """One word for dashboards: ``down`` beats ``catalog_down`` beats ``silent`` beats ``ok``."""
    if not health.source_up:
        return "down"
    if not health.catalog_up:
        return "catalog_down"
    return "silent" if health.silent else "ok"


def health_payload(station: str, health: StationHealth, updated_at: datetime) -> dict[str, Any]:
    return {
        "station": station,
        "state": health_state(health),
        "source_up": health.source_up,
        "silent": health.silent,
        "dropped_windows": health.dropped_windows,
        "windows_processed": health.windows_processed,
        "last_audio_at": health.last_audio_at.isoformat() if health.last_audio_at else None,
        "reconnects": health.reconnects,
        "catalog_up": health.catalog_up,
        "updated_at": updated_at.isoformat(),
    }


@dataclass(frozen=True)
class _SensorSpec:
    key: str
    name: str
    icon: str
    value_template: str
    unit: str | None = None


_NOW_PLAYING_SENSORS = (
    _SensorSpec("title", "Title", "mdi:music", "{{ value_json.title if value_json.playing else None }}"),
    _SensorSpec("artist", "Artist", "mdi:account-music",
                "{{ value_json.artist if value_json.playing else None }}"),
    _SensorSpec("confidence", "Confidence", "mdi:percent",
                "{{ (value_json.confidence * 100) | round(1) if value_json.playing else None }}", unit="%"),
)
_HEALTH_SENSOR = _SensorSpec("source", "Source", "mdi:radio-tower", "{{ value_json.state }}")


def discovery_configs(
    topics: Topics, station_names: Sequence[str], display_names: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Home Assistant MQTT discovery: one device per station with title/artist/confidence/source sensors.

    Returns ``{config topic: config payload}``; all are published retained.  A template that
    renders ``None`` makes HA show the sensor as "unknown" while nothing is playing.
    """
    display_names = display_names or {}
    configs: dict[str, dict[str, Any]] = {}
    for station in station_names:
        device = {
            "identifiers": [f"{topics.node_id}_{station}"],
            "name": display_names.get(station, station),
            "manufacturer": "tunetrace",
            "model": "tunetrace station monitor",
            "sw_version": __version__,
        }
        sensors = [(spec, topics.now_playing(station)) for spec in _NOW_PLAYING_SENSORS]
        sensors.append((_HEALTH_SENSOR, topics.health(station)))
        for spec, state_topic in sensors:
            object_id = f"{station}_{spec.key}"
            config: dict[str, Any] = {
                "name": spec.name,
                "unique_id": f"{topics.node_id}_{object_id}",
                "state_topic": state_topic,
                "value_template": spec.value_template,
                "json_attributes_topic": state_topic,
                "availability_topic": topics.status,
                "payload_available": ONLINE.decode(),
                "payload_not_available": OFFLINE.decode(),
                "icon": spec.icon,
                "device": device,
                "origin": {"name": "tunetrace", "sw_version": __version__},
            }
            if spec.unit:
                config["unit_of_measurement"] = spec.unit
                config["state_class"] = "measurement"
            configs[topics.discovery(object_id)] = config
    return configs


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
