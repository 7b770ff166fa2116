"""The live daemon: stations, sinks, signals, systemd notify/watchdog and one ordered shutdown.

Startup: open the encoder and the catalog (off the loop), open the sinks (play log; MQTT when
configured), build one ``Station`` per configured station sharing the encoder, the catalog and
one embedding executor, then ``READY=1``.

Shutdown (SIGTERM and SIGINT take the same path, bounded by ``service.shutdown_timeout_s``):

1. ``STOPPING=1``; stop capture (cancel the stations: ffmpeg children are terminated, sound cards
   closed) and recognition;
2. end every open play and publish its ``play_ended`` (and an empty now-playing);
3. close the sinks: the MQTT publisher flushes, publishes ``offline`` and disconnects; the play
   log is closed;
4. close the catalog and the executor.

Watchdog: ``WATCHDOG=1`` is sent every half ``WatchdogSec`` only while every station is making
progress (windows processed, or its source legitimately reconnecting); a stuck pipeline stops the
pings and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from tunetrace.config import Config, StationConfig
from tunetrace.encoders.base import Encoder
from tunetrace.matcher import CatalogShape
from tunetrace.recognition import Catalog, LiveMatcher, Station, live_params
from tunetrace.sdnotify import SdNotifier
from tunetrace.sinks import EventSink, FanoutSink, LogSink
from tunetrace.sources import create_source, runner_params
from tunetrace.store import CatalogStore

log = logging.getLogger(__name__)

BATCH_WINDOWS_MAX = 64
_CLOSE_CATALOG_S = 2.0
RING_CAPACITY_S = 30.0
"""Audio each station's ring holds: room to catch up after a slow batch without dropping."""


@dataclass(frozen=True)
class SharedModel:
    encoder: Encoder
    catalog: Catalog
    shape: CatalogShape


def build_station(
    station: StationConfig, config: Config, model: SharedModel, sink: EventSink,
    executor: ThreadPoolExecutor, *, until_eof: bool = False,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Station:
    """One station's pipeline with its own source, ring, matcher and tracker (shared model)."""
    info = model.encoder.info
    source = create_source(station.source, info.sample_rate)
    params = live_params(model.encoder, config.matcher, config.tracker, station.source.silence_threshold_dbfs)
    matcher = LiveMatcher(model.encoder, model.catalog, model.shape, params)
    return Station(
        station, source, runner_params(station.source, info.sample_rate), matcher, model.catalog,
        config.tracker, sink, executor, sample_rate=info.sample_rate, window_s=info.window_s,
        ring_capacity_s=RING_CAPACITY_S, max_pending_windows=config.service.max_pending_windows,
        batch_windows=min(BATCH_WINDOWS_MAX, config.encoder.batch_size),
        health_interval_s=config.service.health_interval_s, until_eof=until_eof, wall_clock=wall_clock,
    )


def default_sinks(config: Config) -> list[EventSink]:
    """The play log always; the MQTT publisher when ``mqtt`` is configured; a log line otherwise."""
    from tunetrace.playlog import PlayLog

    sinks: list[EventSink] = [PlayLog.from_config(config.playlog, config.data_dir)]
    if config.mqtt is None:
        sinks.append(LogSink())
        return sinks
    from tunetrace.publisher import MqttPublisher

    sinks.append(MqttPublisher(
        config.mqtt, config.data_dir / "mqtt-outbox.sqlite3", [s.name for s in config.stations],
        display_names={s.name: s.display_name for s in config.stations if s.display_name},
    ))
    return sinks


class Service:
    def __init__(
        self,
        config: Config,
        *,
        sinks: Sequence[EventSink] | None = None,
        notifier: SdNotifier | None = None,
        model: SharedModel | None = None,
    ) -> None:
        """``sinks``/``model`` replace the configured ones (embedding, tests, benchmarks)."""
        self._config = config
        self._model = model
        self._sinks = list(sinks) if sinks is not None else None
        self._notifier = notifier or SdNotifier.from_environment()
        self._stop = asyncio.Event()
        self.stations: list[Station] = []

    def request_stop(self) -> None:
        """What SIGTERM and SIGINT do; also for embedding the service (tests, benchmarks)."""
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            return await self._run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        self._stop.set()

    async def _run(self) -> int:
        config = self._config
        self._notifier.status("loading the encoder and the catalog")
        closer: _Closer
        if self._model is None:
            model, closer = await asyncio.to_thread(open_model, config)
        else:
            model, closer = self._model, _NothingToClose()
        sinks = self._sinks if self._sinks is not None else default_sinks(config)
        sink = FanoutSink(sinks)
        executor = ThreadPoolExecutor(
            max_workers=max(1, min(4, len(config.stations))), thread_name_prefix="tunetrace-embed",
        )
        try:
            for candidate in sinks:
                start = getattr(candidate, "start", None)
                if start is not None:
                    await start()
            self.stations = [build_station(s, config, model, sink, executor) for s in config.stations]
            if not self.stations:
                log.warning("no stations configured: nothing to recognise (add `stations:` to the config)")
            tracks = len(model.shape.track_vectors)
            log.info("ready: %d station(s), %d catalog track(s), encoder %s",
                     len(self.stations), tracks, model.encoder.info.encoder_id)
            self._notifier.ready(f"{len(self.stations)} station(s), {tracks} track(s)")
            await self._serve()
        finally:
            await self._shutdown(sink, executor, closer)
        return 0

    async def _serve(self) -> None:
        """Run until a stop is requested; a station crashing (a bug) stops the service with an error."""
        async with asyncio.TaskGroup() as group:
            runs = [group.create_task(s.run(), name=f"station-{s.name}") for s in self.stations]
            watchdog = group.create_task(self._watchdog(), name="watchdog")
            await self._stop.wait()
            self._notifier.stopping("stopping capture")
            log.info("stopping capture")
            watchdog.cancel()
            for task in runs:
                task.cancel()

    async def _shutdown(self, sink: EventSink, executor: ThreadPoolExecutor, closer: _Closer) -> None:
        deadline_s = self._config.service.shutdown_timeout_s
        started = time.monotonic()
        self._notifier.stopping("ending open plays")
        try:
            async with asyncio.timeout(deadline_s):
                for station in self.stations:
                    await station.finish()
                await sink.close()
        except TimeoutError:
            log.error("shutdown exceeded %.1f s; some events may be unpublished", deadline_s)
        executor.shutdown(wait=False, cancel_futures=True)
        try:
            async with asyncio.timeout(_CLOSE_CATALOG_S):
                await asyncio.to_thread(closer.close)
        except TimeoutError:
            log.warning("the catalog did not close within %.0f s; exiting anyway", _CLOSE_CATALOG_S)
        log.info("stopped in %.2f s", time.monotonic() - started)

    async def _watchdog(self) -> None:
        interval_s = self._notifier.watchdog_interval_s
        if interval_s is None:
            return
        stall_s = 2 * interval_s
        while True:
            stuck = [s.name for s in self.stations if not s.progressing(stall_s)]
            if stuck:
                log.warning("pipeline stalled for station(s) %s: not feeding the watchdog", ", ".join(stuck))
            else:
                self._notifier.watchdog()
            await asyncio.sleep(interval_s)


class _Closer(Protocol):
    def close(self) -> None: ...


class _NothingToClose:
    def close(self) -> None:
        return None


def open_model(config: Config) -> tuple[SharedModel, CatalogStore]:
    """Blocking: load the encoder, open the catalog (refusing another encoder's), read its shape."""
    from tunetrace.identify import catalog_shape
    from tunetrace.runtime import open_encoder, open_store

    data_dir_ready(config.data_dir)
    encoder = open_encoder(config)
    store = open_store(config, encoder, create=False)
    shape = catalog_shape(store)
    if not shape.track_vectors:
        log.warning("the catalog at %s is empty: nothing can be recognised until tracks are ingested",
                    config.milvus_uri())
    return SharedModel(encoder, store, shape), store


async def serve(config: Config, *, sinks: Sequence[EventSink] | None = None) -> int:
    return await Service(config, sinks=sinks).run()


def data_dir_ready(path: Path) -> None:
    """Create the data directory (systemd's ``StateDirectory=`` normally already has)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True, exist_ok=True)
