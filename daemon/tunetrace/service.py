"""The live daemon: stations, sinks, signals, systemd notify/watchdog and one ordered shutdown.

Startup: open the encoder and the catalog (off the loop), open the play history (closing the
plays a crash left open, ``crash_recovered``) and the sinks (play log; MQTT when configured),
publish the recovered plays' ``play_ended``, build one ``Station`` per configured station sharing
the encoder, the catalog and one embedding executor (each fed its last play, so an interrupted
airing heard again is continued), bind the HTTP server when ``http:`` is configured (metrics, API,
status page, ``/healthz``: ``observe.http``; it then runs as one more task beside the stations),
then ``READY=1``.

Shutdown (SIGTERM and SIGINT take the same path, bounded by ``service.shutdown_timeout_s``):

1. ``STOPPING=1``; stop capture (cancel the stations: ffmpeg children are terminated, sound cards
   closed) and recognition;
2. end every open play and publish its ``play_ended`` (and an empty now-playing);
3. close the sinks: the MQTT publisher flushes, publishes ``offline`` and disconnects; the play
   log is closed;
4. close the catalog and the executor.

Live catalog: the daemon listens on ``<data_dir>/control.sock`` (``catalog.control``), so that
``tunetrace ingest`` and ``catalog remove`` reach it while it owns an embedded catalog, and
re-reads the catalog's tracks every ``service.catalog_refresh_s`` for writes made by other
processes on a shared server; either way every station gets the new shape (``catalog.live``).

Watchdog: ``WATCHDOG=1`` is sent every half ``WatchdogSec`` only while every station is making
progress (windows processed, or its source legitimately reconnecting); a stuck pipeline stops the
pings and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tunetrace.catalog.control import ControlServer, socket_path
from tunetrace.catalog.live import CatalogChange, LiveCatalog
from tunetrace.catalog.overlaps import OverlapParams
from tunetrace.catalog.shared import CACHE_NAME as SHARED_AUDIO_CACHE
from tunetrace.catalog.shared import SharedAudioRecord
from tunetrace.config import Config
from tunetrace.errors import CatalogError
from tunetrace.events import PlayEvent
from tunetrace.history.sink import HistorySink
from tunetrace.observe.base import MqttStatus, NullMetrics, PipelineMetrics, StationStatus
from tunetrace.observe.board import StatusBoard
from tunetrace.pipeline import SharedModel, Station, build_station, open_model, shared_batcher
from tunetrace.publish.base import EventSink, FanoutSink, LogSink
from tunetrace.sdnotify import SdNotifier
from tunetrace.store.resident import ResidentCatalog
from tunetrace.tracker import SharedAudio

if TYPE_CHECKING:
    from tunetrace.observe.http import HttpServer
    from tunetrace.store.milvus import CatalogStore

log = logging.getLogger(__name__)

_CLOSE_CATALOG_S = 2.0
_SINK_CLOSE_MARGIN_S = 0.5
"""Of the shutdown budget, kept back from the sinks' flush so their goodbye still fits."""


def default_sinks(config: Config) -> list[EventSink]:
    """The play log always; the MQTT publisher when ``mqtt`` is configured; a log line otherwise."""
    from tunetrace.publish.playlog import PlayLog

    sinks: list[EventSink] = [PlayLog.from_config(config.playlog, config.data_dir)]
    if config.mqtt is None:
        sinks.append(LogSink())
        return sinks
    from tunetrace.publish.mqtt import MqttPublisher

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
        history: HistorySink | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``sinks``/``model``/``history`` replace the configured ones (embedding, tests,
        benchmarks; the history is always kept: it is the record); ``monotonic`` is the clock of
        every timing decision (watchdog, shutdown budget)."""
        self._config = config
        self._monotonic = monotonic
        self._model = model
        self._sinks = list(sinks) if sinks is not None else None
        self._history = history or HistorySink.from_url(
            config.history_url(), [s.name for s in config.stations], config.history,
        )
        self._notifier = notifier or SdNotifier.from_environment()
        self._stop = asyncio.Event()
        self.stations: list[Station] = []
        self.live: LiveCatalog | None = None
        """The writable catalog (``None`` when a model was handed in: nothing to write to)."""
        self._control: ControlServer | None = None
        self._board = StatusBoard(config.http.recent_plays) if config.http else None
        self._metrics: PipelineMetrics = NullMetrics()
        self._http: HttpServer | None = None
        self._store: CatalogStore | None = None
        self._shared_audio: SharedAudioRecord | None = None
        self._catalog_changed = asyncio.Event()
        """Set on every catalog change: the shared-audio record searches the new tracks."""

    def station_statuses(self) -> list[StationStatus]:
        """The live view the HTTP API and ``/healthz`` read (``StatusSource``)."""
        timeout_s = self._config.http.progress_timeout_s if self._config.http else 60.0
        names = {s.name: s.display_name or s.name for s in self._config.stations}
        board = self._board
        return [
            StationStatus(
                name=station.name, display_name=names.get(station.name, station.name),
                health=station.health(), progressing=station.progressing(timeout_s),
                now_playing=station.now_playing,
                recent_plays=board.recent_plays(station.name) if board else (),
            )
            for station in self.stations
        ]

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
        store: CatalogStore | None = None
        if self._model is None:
            model, opened = await asyncio.to_thread(partial(open_model, config, resident=True))
            closer = store = self._store = opened
            self.live = LiveCatalog(
                opened, model.encoder, config.ingest, config.encoder.batch_size, self._apply_change,
                model.tracks, model.catalog if isinstance(model.catalog, ResidentCatalog) else None,
            )
            if config.tracker.shared_audio:
                self._shared_audio = SharedAudioRecord(
                    config.data_dir / SHARED_AUDIO_CACHE, model.encoder.info.encoder_id,
                    OverlapParams(model.encoder.info.hop_s),
                )
        else:
            model, closer = self._model, _NothingToClose()
        history = self._history
        try:
            await history.start()  # HistoryError: the daemon does not run without its record
        except BaseException:
            await asyncio.to_thread(closer.close)
            raise
        sinks = list(self._sinks) if self._sinks is not None else default_sinks(config)
        if self._board is not None:
            sinks.append(self._board)
        self._metrics = self._observe(sinks, model)
        sink = FanoutSink([history, *sinks])
        executor = ThreadPoolExecutor(
            max_workers=max(1, min(4, len(config.stations))), thread_name_prefix="tunetrace-embed",
        )
        try:
            await sink.start()
            for play in history.recovered:
                await sink.publish_event(PlayEvent("play_ended", play))
            batcher = shared_batcher(model, executor, config, self._metrics)
            self.stations = [
                build_station(
                    s, config, model, sink, executor, monotonic=self._monotonic, metrics=self._metrics,
                    progress=history, resume=history.last_play(s.name), batcher=batcher,
                )
                for s in config.stations
            ]
            if self._http is not None:
                await self._http.start()
            if not self.stations:
                log.warning("no stations configured: nothing to recognise (add `stations:` to the config)")
            if store is not None:
                await self._listen(store)
            tracks = len(model.shape.track_vectors)
            log.info("ready: %d station(s), %d catalog track(s), encoder %s",
                     len(self.stations), tracks, model.encoder.info.encoder_id)
            self._notifier.ready(f"{len(self.stations)} station(s), {tracks} track(s)")
            await self._serve()
        finally:
            await self._shutdown(sink, executor, closer)
        return 0

    async def _listen(self, store: CatalogStore) -> None:
        """Open the control socket and write it into the catalog lock, where a refused command
        finds it."""
        assert self.live is not None
        control = ControlServer(socket_path(self._config.data_dir), self.live)
        try:
            await control.start()
        except (CatalogError, OSError) as exc:  # monitoring matters more than live ingest
            log.warning("no control socket, so `tunetrace ingest` cannot reach this daemon: %s", exc)
            return
        self._control = control
        if store.lock is not None:
            store.lock.record(command="tunetrace serve", control_socket=self._control.path)

    def _apply_change(self, change: CatalogChange) -> None:
        self._metrics.catalog_size(len(change.shape.track_vectors), change.shape.total_vectors)
        for station in self.stations:
            station.catalog_changed(change.shape, change.changed)
        self._catalog_changed.set()

    async def _follow_shared_audio(self) -> None:
        """Find the catalog's shared audio after the start (tracks not in the cache only) and after
        every catalog change, and hand it to the stations as it is found. An optional feature: any
        failure is logged and retried after ``service.catalog_refresh_s`` (the catalog may be
        restarting), never allowed to stop the daemon. Cancelled, it stops the search thread
        after the track it is on and waits for it, so the catalog is not closed under it."""
        record, store = self._shared_audio, self._store
        if record is None or store is None:
            return
        loop = asyncio.get_running_loop()

        def publish(spans: SharedAudio) -> None:  # from the search thread
            loop.call_soon_threadsafe(self._hand_shared_audio, spans)

        while True:
            self._catalog_changed.clear()
            search = asyncio.ensure_future(asyncio.to_thread(record.update, store, publish))
            try:
                spans = await asyncio.shield(search)
            except asyncio.CancelledError:
                record.stop()
                await asyncio.gather(search, return_exceptions=True)
                raise
            except Exception:  # optional: logged and retried, never fatal
                log.warning("cannot search the catalog for shared audio (will retry)", exc_info=True)
                await asyncio.sleep(self._config.service.catalog_refresh_s)
                continue
            self._hand_shared_audio(spans)
            await self._catalog_changed.wait()

    def _hand_shared_audio(self, spans: SharedAudio) -> None:
        for station in self.stations:
            station.know_shared_audio(spans)

    async def _serve(self) -> None:
        """Run until a stop is requested; a station crashing (a bug) stops the service with an error."""
        async with asyncio.TaskGroup() as group:
            runs = [group.create_task(s.run(), name=f"station-{s.name}") for s in self.stations]
            watchdog = group.create_task(self._watchdog(), name="watchdog")
            refresh = group.create_task(self._refresh_catalog(), name="catalog-refresh")
            shared = group.create_task(self._follow_shared_audio(), name="shared-audio")
            watched = self._config.ingest.watch_folder
            watch = (group.create_task(self.live.watch(watched, self._config.ingest.watch_interval_s),
                                       name="catalog-watch")
                     if self.live is not None and watched is not None else None)
            if self._http is not None:
                runs.append(group.create_task(self._http.serve(), name="http"))
            await self._stop.wait()
            self._notifier.stopping("stopping capture")
            log.info("stopping capture")
            watchdog.cancel()
            refresh.cancel()
            shared.cancel()
            if watch is not None:
                watch.cancel()
            for task in runs:
                task.cancel()

    async def _refresh_catalog(self) -> None:
        """Pick up tracks other processes added to (or removed from) a shared catalog."""
        if self.live is None:
            return
        while True:
            await asyncio.sleep(self._config.service.catalog_refresh_s)
            try:
                await self.live.refresh()
            except CatalogError as exc:
                log.warning("cannot re-read the catalog's tracks (will retry): %s", exc)

    def _observe(self, sinks: Sequence[EventSink], model: SharedModel) -> PipelineMetrics:
        """With ``http:``: Prometheus metrics and the HTTP server over them (built, not yet bound)."""
        http_config = self._config.http
        if http_config is None:
            return NullMetrics()
        from tunetrace.history.query import HistoryPlayQuery
        from tunetrace.observe.http import HttpServer
        from tunetrace.observe.metrics import CONTENT_TYPE, PrometheusMetrics

        metrics = PrometheusMetrics()
        metrics.catalog_size(len(model.shape.track_vectors), model.shape.total_vectors)
        for sink in sinks:
            if isinstance(sink, _ReportsMqtt):
                metrics.watch_mqtt(sink.mqtt_status)
        plays = HistoryPlayQuery(self._config.history_url())  # the record, not the rotating log
        self._http = HttpServer(http_config, _StatusView(self), plays, metrics,
                                metrics_content_type=CONTENT_TYPE)
        return metrics

    async def _shutdown(self, sink: EventSink, executor: ThreadPoolExecutor, closer: _Closer) -> None:
        deadline_s = self._config.service.shutdown_timeout_s
        started = self._monotonic()
        if self.live is not None:
            self.live.stop()
        if self._control is not None:
            await self._control.close()
        if self._http is not None:
            await self._http.close()  # already closed when its task was cancelled; not if startup failed
        self._notifier.stopping("ending open plays")
        try:
            async with asyncio.timeout(deadline_s):
                for station in self.stations:
                    await station.finish()
                # The sinks get what is left, less a margin for their own goodbye (MQTT's offline).
                left_s = deadline_s - (self._monotonic() - started)
                await sink.close(max(0.0, left_s - _SINK_CLOSE_MARGIN_S))
        except TimeoutError:
            log.error("shutdown exceeded %.1f s; some events may be unpublished", deadline_s)
        executor.shutdown(wait=False, cancel_futures=True)
        try:
            async with asyncio.timeout(_CLOSE_CATALOG_S):
                await asyncio.to_thread(closer.close)
        except TimeoutError:
            log.warning("the catalog did not close within %.0f s; exiting anyway", _CLOSE_CATALOG_S)
        log.info("stopped in %.2f s", self._monotonic() - started)

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


class _StatusView:
    """``StatusSource`` over the service (the HTTP server sees this, not the whole service)."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def stations(self) -> list[StationStatus]:
        return self._service.station_statuses()


@runtime_checkable
class _ReportsMqtt(Protocol):
    def mqtt_status(self) -> MqttStatus: ...


class _Closer(Protocol):
    def close(self) -> None: ...


class _NothingToClose:
    def close(self) -> None:
        return None


async def serve(config: Config, *, sinks: Sequence[EventSink] | None = None) -> int:
    return await Service(config, sinks=sinks).run()
