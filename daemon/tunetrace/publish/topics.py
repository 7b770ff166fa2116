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
from tunetrace.observe.base import SOURCE_STATES, source_state

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

    def discovery(self, object_id: str, component: str = "sensor") -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    @property
    def discovery_wildcard(self) -> str:
        """Every config this daemon's node may have left retained, whatever the component."""
        return f"{self.discovery_prefix}/+/{self.node_id}/+/config"


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
    return source_state(health)


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
_STATION_UP_TEMPLATE = "{{ 'offline' if value_json.state == 'down' else 'online' }}"
"""Now-playing entities turn *unavailable* while the station's source is down, so a dead station
no longer looks like "nothing recognised"."""
_PLAY_EVENT_TEMPLATE = (
    "{{ {'event_type': value_json.event, 'play_id': value_json.play.play_id, "
    "'track_id': value_json.play.track_id, 'title': value_json.play.title, "
    "'artist': value_json.play.artist, 'album': value_json.play.album, "
    "'confidence': value_json.play.confidence, 'started_at': value_json.play.started_at, "
    "'ended_at': value_json.play.ended_at} | to_json }}"
)
PLAY_EVENT_TYPES = ("play_started", "play_ended")
BRIDGE_KEY = "bridge"


def _origin() -> dict[str, Any]:
    return {"name": "tunetrace", "sw_version": __version__}


def _bridge_device(topics: Topics) -> dict[str, Any]:
    return {
        "identifiers": [f"{topics.node_id}_{BRIDGE_KEY}"],
        "name": f"tunetrace ({topics.prefix})",
        "manufacturer": "tunetrace",
        "model": "tunetrace daemon",
        "sw_version": __version__,
    }


def _bridge_configs(topics: Topics) -> dict[str, dict[str, Any]]:
    """The daemon itself: a device whose connectivity follows ``<prefix>/status`` (online, or
    offline at a clean stop and by last will), so it needs no availability of its own."""
    object_id = f"{BRIDGE_KEY}_connectivity"
    return {topics.discovery(object_id, "binary_sensor"): {
        "name": "Connectivity",
        "unique_id": f"{topics.node_id}_{object_id}",
        "state_topic": topics.status,
        "payload_on": ONLINE.decode(),
        "payload_off": OFFLINE.decode(),
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": _bridge_device(topics),
        "origin": _origin(),
    }}


def _availability(topics: Topics, station: str | None) -> dict[str, Any]:
    """The daemon's status; with ``station``, also that station's source being up."""
    entries: list[dict[str, Any]] = [{"topic": topics.status}]
    if station is not None:
        entries.append({"topic": topics.health(station), "value_template": _STATION_UP_TEMPLATE})
    return {
        "availability": entries,
        "availability_mode": "all",
        "payload_available": ONLINE.decode(),
        "payload_not_available": OFFLINE.decode(),
    }


def _station_configs(topics: Topics, station: str, display_name: str) -> dict[str, dict[str, Any]]:
    device = {
        "identifiers": [f"{topics.node_id}_{station}"],
        "name": display_name,
        "manufacturer": "tunetrace",
        "model": "tunetrace station monitor",
        "sw_version": __version__,
        "via_device": f"{topics.node_id}_{BRIDGE_KEY}",
    }
    configs: dict[str, dict[str, Any]] = {}
    for spec in _NOW_PLAYING_SENSORS:
        object_id = f"{station}_{spec.key}"
        config: dict[str, Any] = {
            "name": spec.name,
            "unique_id": f"{topics.node_id}_{object_id}",
            "state_topic": topics.now_playing(station),
            "value_template": spec.value_template,
            "json_attributes_topic": topics.now_playing(station),
            **_availability(topics, station),
            "icon": spec.icon,
            "device": device,
            "origin": _origin(),
        }
        if spec.unit:
            config["unit_of_measurement"] = spec.unit
            config["state_class"] = "measurement"
        configs[topics.discovery(object_id)] = config
    object_id = f"{station}_{_HEALTH_SENSOR.key}"
    configs[topics.discovery(object_id)] = {
        "name": _HEALTH_SENSOR.name,
        "unique_id": f"{topics.node_id}_{object_id}",
        "state_topic": topics.health(station),
        "value_template": _HEALTH_SENSOR.value_template,
        "json_attributes_topic": topics.health(station),
        **_availability(topics, None),
        "device_class": "enum",
        "options": list(SOURCE_STATES),
        "entity_category": "diagnostic",
        "icon": _HEALTH_SENSOR.icon,
        "device": device,
        "origin": _origin(),
    }
    object_id = f"{station}_play"
    configs[topics.discovery(object_id, "event")] = {
        "name": "Play",
        "unique_id": f"{topics.node_id}_{object_id}",
        "state_topic": topics.events(station),
        "value_template": _PLAY_EVENT_TEMPLATE,
        "event_types": list(PLAY_EVENT_TYPES),
        **_availability(topics, None),
        "icon": "mdi:playlist-music",
        "device": device,
        "origin": _origin(),
    }
    return configs


def discovery_configs(
    topics: Topics, station_names: Sequence[str], display_names: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Home Assistant MQTT discovery: a bridge device for the daemon (connectivity), and one device
    per station ``via_device`` the bridge with title/artist/confidence sensors, a source-state
    sensor (diagnostic, declared options) and a ``play_started``/``play_ended`` event entity.

    Returns ``{config topic: config payload}``; all are published retained.  A template that
    renders ``None`` makes HA show the sensor as "unknown" while nothing is playing.
    """
    display_names = display_names or {}
    configs = _bridge_configs(topics)
    for station in station_names:
        configs.update(_station_configs(topics, station, display_names.get(station, station)))
    return configs


def is_discovery_topic(topics: Topics, topic: str) -> bool:
    """A config topic in this daemon's node namespace (``<discovery>/<component>/<node_id>/<id>/config``)."""
    parts = topic.split("/")
    prefix_parts = topics.discovery_prefix.split("/")
    return (
        len(parts) == len(prefix_parts) + 4 and parts[: len(prefix_parts)] == prefix_parts
        and parts[-3] == topics.node_id and parts[-1] == "config"
    )


def stale_discovery_topics(topics: Topics, retained: Sequence[str], current: Sequence[str]) -> list[str]:
    """Retained configs of this node that the current config no longer publishes (a station that
    left the config, an entity a newer version dropped): clear them with empty retained payloads."""
    keep = set(current)
    return sorted(t for t in set(retained) if is_discovery_topic(topics, t) and t not in keep)


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
