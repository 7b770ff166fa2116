"""What the pipeline reports, and what the HTTP server reads: Protocols and values, no library.

The pipeline calls ``StationMetrics`` (one per station) and ``PipelineMetrics`` (the process); the
Prometheus implementation lives in ``observe.metrics`` and the no-op one here, so a station built
without an HTTP server (tests, ``identify``, benchmarks) pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from tunetrace.events import Play, StationHealth

SourceState = Literal["ok", "silent", "catalog_down", "down"]
SOURCE_STATES: tuple[SourceState, ...] = ("ok", "silent", "catalog_down", "down")
"""Every value of a station's one-word state, the order dashboards list them in."""


def source_state(health: StationHealth) -> SourceState:
    """One word for dashboards: ``down`` beats ``catalog_down`` beats ``silent`` beats ``ok``."""
    if not health.source_up:
        return "down"
    if not health.catalog_up:
        return "catalog_down"
    return "silent" if health.silent else "ok"


class StationMetrics(Protocol):
    """One station's measurements; every method is cheap and safe to call from a worker thread."""

    def audio(self, seconds: float) -> None:
        """``seconds`` more of the station's audio were searched (new windows times the hop)."""
        ...

    def searched(self, seconds: float, *, ok: bool) -> None:
        """One catalog search took ``seconds``; ``ok`` is false when it raised."""
        ...

    def dropped(self, windows: int) -> None:
        """``windows`` were not recognised (recognition fell behind, or the catalog was down)."""
        ...

    def state(self, state: SourceState) -> None: ...

    def play_started(self) -> None: ...

    def confidence(self, value: float) -> None:
        """The open play's confidence; 0 when nothing is playing."""
        ...


class PipelineMetrics(Protocol):
    """Process-wide measurements, and the factory of the per-station ones."""

    def station(self, name: str) -> StationMetrics: ...

    def embedded(self, seconds: float, windows: int) -> None:
        """One encoder call over ``windows`` windows took ``seconds``."""
        ...

    def catalog_size(self, tracks: int, vectors: int) -> None: ...

    def watch_mqtt(self, status: Callable[[], MqttStatus]) -> None:
        """Read the MQTT connection and outbox at each scrape (nothing to push between scrapes)."""
        ...


@dataclass(frozen=True)
class MqttStatus:
    connected: bool
    outbox_depth: int
    """Events waiting on disk for the broker."""
    dropped_events: int
    """Events the full outbox discarded (over the outbox file's lifetime)."""


class NullStationMetrics:
    def audio(self, seconds: float) -> None:
        return None

    def searched(self, seconds: float, *, ok: bool) -> None:
        return None

    def dropped(self, windows: int) -> None:
        return None

    def state(self, state: SourceState) -> None:
        return None

    def play_started(self) -> None:
        return None

    def confidence(self, value: float) -> None:
        return None


class NullMetrics:
    def station(self, name: str) -> StationMetrics:
        return NullStationMetrics()

    def embedded(self, seconds: float, windows: int) -> None:
        return None

    def catalog_size(self, tracks: int, vectors: int) -> None:
        return None

    def watch_mqtt(self, status: Callable[[], MqttStatus]) -> None:
        return None


@dataclass(frozen=True)
class StationStatus:
    """A station as the HTTP API shows it: configuration, live health and its recent plays."""

    name: str
    display_name: str
    health: StationHealth | None
    """``None`` until the station's first health report."""
    progressing: bool
    """The pipeline made progress within ``http.progress_timeout_s`` (``/healthz``)."""
    now_playing: Play | None
    recent_plays: tuple[Play, ...]
    """Newest first: the open play (if any) and the plays that ended."""

    @property
    def state(self) -> SourceState | Literal["starting"]:
        return "starting" if self.health is None else source_state(self.health)


class StatusSource(Protocol):
    """What the HTTP server reads: the service's live view of its stations."""

    def stations(self) -> list[StationStatus]: ...
