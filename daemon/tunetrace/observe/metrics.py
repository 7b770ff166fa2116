"""Prometheus metrics: every name and its registry in one place (the only prometheus_client import).

Names are documented, with example alert rules, in ``docs/metrics.md``. Per station (label
``station``): source state, seconds of audio searched, windows dropped, searches and their
latency, plays started, the open play's confidence. Per process: catalog size, embedding latency,
the MQTT connection and its outbox depth.

The registry is private to the daemon (not the library's global one), so two services in one
process (tests) never collide, and the exposition carries nothing but tunetrace's metrics plus
the usual process metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tunetrace.observe.base import SOURCE_STATES, MqttStatus, SourceState, StationMetrics

CONTENT_TYPE = CONTENT_TYPE_LATEST
_SEARCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Milvus Lite answers a live search in ~5 ms; a server over the network in tens of ms; seconds
mean trouble (a restarting server, CPU starvation)."""
_EMBED_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class PrometheusMetrics:
    """``PipelineMetrics`` backed by a private ``CollectorRegistry``; ``exposition()`` is /metrics."""

    def __init__(self) -> None:
        # ``*_created`` series double the exposition and no dashboard or alert here reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client 0.26
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        ProcessCollector(registry=registry)
        self._state = Enum(
            "tunetrace_station_source_state", "Station state: ok, silent, catalog_down or down (1 = current)",
            ["station"], states=list(SOURCE_STATES), registry=registry,
        )
        self._audio = Counter(
            "tunetrace_station_audio_seconds", "Seconds of station audio searched in the catalog",
            ["station"], registry=registry,
        )
        self._dropped = Counter(
            "tunetrace_station_windows_dropped", "Windows not recognised (recognition behind, catalog down)",
            ["station"], registry=registry,
        )
        self._searches = Counter(
            "tunetrace_station_searches", "Catalog searches by outcome (ok, error)",
            ["station", "outcome"], registry=registry,
        )
        self._search_latency = Histogram(
            "tunetrace_station_search_seconds", "Latency of one catalog search (one batch of windows)",
            ["station"], buckets=_SEARCH_BUCKETS_S, registry=registry,
        )
        self._plays = Counter(
            "tunetrace_station_plays_started", "Plays started", ["station"], registry=registry,
        )
        self._confidence = Gauge(
            "tunetrace_station_confidence", "Confidence of the open play (0: nothing recognised playing)",
            ["station"], registry=registry,
        )
        self._embed_latency = Histogram(
            "tunetrace_embedding_seconds", "Latency of one encoder call (a batch of windows)",
            buckets=_EMBED_BUCKETS_S, registry=registry,
        )
        self._embedded = Counter(
            "tunetrace_embedded_windows", "Windows embedded by the encoder", registry=registry,
        )
        self._tracks = Gauge("tunetrace_catalog_tracks", "Tracks in the catalog", registry=registry)
        self._vectors = Gauge("tunetrace_catalog_vectors", "Window vectors in the catalog", registry=registry)
        self._mqtt = _MqttCollector()
        registry.register(self._mqtt)

    def station(self, name: str) -> StationMetrics:
        return _PrometheusStation(self, name)

    def embedded(self, seconds: float, windows: int) -> None:
        self._embed_latency.observe(seconds)
        self._embedded.inc(windows)

    def catalog_size(self, tracks: int, vectors: int) -> None:
        self._tracks.set(tracks)
        self._vectors.set(vectors)

    def watch_mqtt(self, status: Callable[[], MqttStatus]) -> None:
        self._mqtt.status = status

    def exposition(self) -> bytes:
        """The text exposition format served at ``/metrics`` (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class _PrometheusStation:
    """One station's children, created up front so every series exists from the first scrape."""

    def __init__(self, metrics: PrometheusMetrics, name: str) -> None:
        self._state = metrics._state.labels(station=name)
        self._audio = metrics._audio.labels(station=name)
        self._dropped = metrics._dropped.labels(station=name)
        self._ok = metrics._searches.labels(station=name, outcome="ok")
        self._error = metrics._searches.labels(station=name, outcome="error")
        self._latency = metrics._search_latency.labels(station=name)
        self._plays = metrics._plays.labels(station=name)
        self._confidence = metrics._confidence.labels(station=name)
        self._state.state("down")  # until the source delivers audio

    def audio(self, seconds: float) -> None:
        self._audio.inc(seconds)

    def searched(self, seconds: float, *, ok: bool) -> None:
        (self._ok if ok else self._error).inc()
        self._latency.observe(seconds)

    def dropped(self, windows: int) -> None:
        if windows > 0:
            self._dropped.inc(windows)

    def state(self, state: SourceState) -> None:
        self._state.state(state)

    def play_started(self) -> None:
        self._plays.inc()

    def confidence(self, value: float) -> None:
        self._confidence.set(value)


class _MqttCollector(Collector):
    """Reads the publisher at scrape time; absent series when MQTT is not configured."""

    def __init__(self) -> None:
        self.status: Callable[[], MqttStatus] | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        if self.status is None:
            return
        status = self.status()
        yield GaugeMetricFamily("tunetrace_mqtt_connected", "1 while connected to the broker",
                                value=1.0 if status.connected else 0.0)
        yield GaugeMetricFamily("tunetrace_mqtt_outbox_depth", "Play events waiting on disk for the broker",
                                value=float(status.outbox_depth))
        yield GaugeMetricFamily("tunetrace_mqtt_outbox_dropped_events",
                                "Events the full outbox discarded (over the outbox file's lifetime)",
                                value=float(status.dropped_events))
