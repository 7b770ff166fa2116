"""MQTT publishing of now-playing, play events, health and Home Assistant discovery.

The only module that imports aiomqtt.  Topics and payloads are pure functions in
``publish.topics``, documented in ``docs/mqtt.md`` and pinned by the JSON Schemas in
``tunetrace/schemas/``.

Lifecycle (for the service)::

    publisher = MqttPublisher(config.mqtt, data_dir / "mqtt-outbox.sqlite3", ["radio-one", ...])
    await publisher.start()          # opens the outbox, connects in the background, returns at once
    await publisher.publish_event(event)              # EventSink methods, never wait on the network
    await publisher.publish_now_playing("radio-one", play_or_none)
    await publisher.publish_health("radio-one", health)
    await publisher.close(deadline_s=3.0)   # flush within the deadline, retained "offline", DISCONNECT

Delivery guarantees:

- ``publish_event`` appends the event to a durable on-disk ``Outbox`` (fsync'd) and wakes the
  sender; it returns without touching the network.  The sender publishes outbox messages one at a
  time, in order, with QoS 1 and removes each only after its PUBACK, so events produced while the
  broker is unreachable (or before a crash or restart) are delivered after reconnecting: at least
  once, in order; consumers drop the rare duplicate by ``event_id``.  The outbox is bounded
  (``MqttConfig.outbox_max_events``): beyond it the oldest events are dropped and counted.
- When the outbox cannot be written (a full disk, an I/O error) the event is not lost: it is kept
  in memory behind the outbox (same bound, same policy), moved to disk as soon as a write
  succeeds, and published from memory while the broker is connected.  ``unsaved_events`` (in the
  stats and every health payload) says how many would not survive a crash; one ERROR line per
  spell names the file and the fix.
- Now-playing and health are *state*: retained, only the latest value per topic matters, so they
  are kept in memory and (re)published on every connect instead of queued.
- ``<prefix>/status`` is ``online`` (retained) after every connect and ``offline`` (retained) at a
  clean close; the broker publishes ``offline`` as the last will when the process dies.

One long-lived task owns the connection and reconnects with capped, jittered exponential backoff;
a refused login is logged as an error naming the config keys to check and retried like any other
failure.  The password is handed to the MQTT client only and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from tunetrace.backoff import Backoff, BackoffPolicy
from tunetrace.config import MqttConfig
from tunetrace.errors import ConfigError
from tunetrace.events import Play, PlayEvent, StationHealth
from tunetrace.observe.base import MqttStatus
from tunetrace.publish.outbox import Outbox
from tunetrace.publish.topics import (
    OFFLINE,
    ONLINE,
    Topics,
    discovery_configs,
    encode,
    health_payload,
    now_playing_payload,
    stale_discovery_topics,
)

log = logging.getLogger(__name__)

_OPERATION_TIMEOUT_S = 10.0
"""How long one publish may wait for its PUBACK before the connection is considered broken."""
_STABLE_CONNECTION_S = 10.0
"""A connection that lasted this long resets the backoff; a flapping one keeps backing off."""
_GOODBYE_S = 1.0
"""Part of the close deadline kept for publishing ``offline`` and disconnecting."""
_OUTBOX_BATCH = 32
_DISK_RETRY_S = 5.0
"""While outbox writes fail, how often the sender retries them without new events."""


@dataclass(frozen=True)
class _Unsaved:
    """An event the outbox could not store yet (a full disk)."""

    topic: str
    payload: bytes
    message_id: str
"""Outbox messages read per disk access; retained state is refreshed between batches."""
_SWEEP_QUIET_S = 0.5
"""Retained configs arrive right after the subscription; this long without one means all came."""
_SWEEP_MAX_S = 5.0
_AUTH_REFUSED_CODES = frozenset({4, 5, 134, 135})
"""CONNACK codes meaning bad credentials (MQTT 3.1.1: 4, 5; MQTT 5: 134, 135)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


# -- the publisher ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublisherStats:
    connected: bool
    connects: int
    """Successful connections since start (1 + reconnects)."""
    delivered_events: int
    """Events acknowledged by the broker since start."""
    pending_events: int
    """Events waiting in the outbox."""
    dropped_events: int
    """Events discarded when full: by the outbox (over its file's lifetime) and, while the disk
    failed, from memory (since start)."""
    unsaved_events: int
    """Events held only in memory because the outbox could not be written (lost on a crash)."""
    pending_state: int
    """Retained topics (now-playing, health, discovery) whose latest value the broker has not yet acked."""


class MqttPublisher:
    """``EventSink`` publishing to an MQTT broker; see the module docstring for the lifecycle."""

    def __init__(
        self,
        config: MqttConfig,
        outbox_path: Path,
        station_names: Sequence[str],
        *,
        display_names: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = _utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._outbox_path = outbox_path
        self._clock = clock
        self._rng = rng
        self._topics = Topics(config.topic_prefix, config.discovery_prefix)
        self._outbox: Outbox | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._append_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._abandon_flush = False
        self._connects = 0
        self._delivered = 0
        self._unsaved: deque[_Unsaved] = deque()
        """Events the outbox could not store (full disk), oldest first, all newer than the outbox's."""
        self._dropped_unsaved = 0
        self._disk_failing = False
        self._unacked: set[int] = set()
        """Outbox messages the broker acknowledged whose deletion failed (full disk): never resent."""
        # Retained state, latest value per topic, republished in this order on every connect.
        self._retained: dict[str, bytes] = {}
        self._dirty: dict[str, None] = {}
        self._discovery_topics: tuple[str, ...] = ()
        self._swept = not config.discovery
        """Stale Home Assistant configs are cleared once, on the first connection."""
        if config.discovery:
            configs = discovery_configs(self._topics, station_names, display_names)
            self._discovery_topics = tuple(configs)
            for topic, payload in configs.items():
                self._set_retained(topic, encode(payload))
        for station in station_names:
            self._set_retained(self._topics.now_playing(station),
                               encode(now_playing_payload(station, None, clock())))

    @property
    def topics(self) -> Topics:
        return self._topics

    async def start(self) -> None:
        """Open the outbox and start the connection task; returns without waiting for the broker."""
        if self._task is not None:
            raise RuntimeError("MqttPublisher.start() called twice")
        self._tls_context = await asyncio.to_thread(self._make_tls_context)
        self._outbox = await asyncio.to_thread(Outbox, self._outbox_path, self._config.outbox_max_events)
        self._task = asyncio.create_task(self._run(), name="mqtt-publisher")
        self._task.add_done_callback(_log_crash)

    async def wait_connected(self) -> None:
        """Return once connected and ``online`` is published (wrap in ``asyncio.timeout``)."""
        await self._connected.wait()

    def mqtt_status(self) -> MqttStatus:
        """For the metrics, read at each scrape."""
        stats = self.stats()
        return MqttStatus(stats.connected, stats.pending_events, stats.dropped_events)

    def stats(self) -> PublisherStats:
        outbox = self._outbox.stats() if self._outbox else None
        return PublisherStats(
            connected=self._connected.is_set(),
            connects=self._connects,
            delivered_events=self._delivered,
            pending_events=(outbox.pending - len(self._unacked) if outbox else 0) + len(self._unsaved),
            dropped_events=(outbox.dropped_total if outbox else 0) + self._dropped_unsaved,
            unsaved_events=len(self._unsaved),
            pending_state=len(self._dirty),
        )

    # -- EventSink ---------------------------------------------------------------------------------

    async def publish_event(self, event: PlayEvent) -> None:
        """Persist the event in the outbox (fsync'd) and wake the sender; no network wait.

        If the outbox cannot be written the event waits in memory (never dropped for that)."""
        self._require_outbox()
        message = _Unsaved(self._topics.events(event.play.station), encode(event.to_json()), event.event_id)
        async with self._append_lock:  # FIFO: keeps the outbox in call order
            self._unsaved.append(message)
            await self._save_unsaved()
        self._wake.set()

    async def _save_unsaved(self) -> None:
        """Move events kept in memory to the outbox, oldest first, until a write fails."""
        outbox = self._outbox
        while self._unsaved and outbox is not None:
            message = self._unsaved[0]
            try:
                await asyncio.to_thread(outbox.append, message.topic, message.payload, message.message_id)
            except (sqlite3.Error, OSError) as exc:
                self._outbox_write_failed(exc)
                return
            self._unsaved.popleft()
            if self._disk_failing:
                self._disk_failing = False
                log.info("MQTT outbox %s writable again", outbox.path)

    def _outbox_write_failed(self, exc: Exception) -> None:
        limit = self._config.outbox_max_events
        excess = len(self._unsaved) - limit
        if excess > 0:  # the outbox's own policy: the oldest go, counted
            for _ in range(excess):
                self._unsaved.popleft()
            self._dropped_unsaved += excess
            log.warning("%d event(s) dropped: %d wait in memory (mqtt.outbox_max_events)", excess, limit)
        if not self._disk_failing:  # one line per spell
            self._disk_failing = True
            outbox = self._require_outbox()
            log.error(
                "cannot write the MQTT outbox %s: %s; %d event(s) kept in memory (lost if the daemon "
                "dies) and retried; free space in %s",
                outbox.path, exc, len(self._unsaved), outbox.path.parent,
            )

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        payload = now_playing_payload(station, play, self._clock())
        self._set_retained(self._topics.now_playing(station), encode(payload))
        self._wake.set()

    async def publish_health(self, station: str, health: StationHealth) -> None:
        if self._unsaved and self._outbox is not None:  # health ticks are the retry timer too
            async with self._append_lock:
                await self._save_unsaved()
        stats = self.stats()
        payload = health_payload(station, health, self._clock()) | {
            "events_pending": stats.pending_events, "events_unsaved": stats.unsaved_events,
            "events_dropped": stats.dropped_events,
        }
        self._set_retained(self._topics.health(station), encode(payload))
        self._wake.set()

    async def close(self, deadline_s: float) -> None:
        """Deliver what can be delivered within ``deadline_s``, publish ``offline``, disconnect.

        Events still undelivered stay in the outbox for the next start.  While the broker is
        unreachable this returns as soon as the current connection attempt ends (at once while
        waiting out a backoff delay), at the latest after ``deadline_s`` plus a second.
        """
        task = self._task
        if task is not None and not task.done():
            self._closing.set()
            self._wake.set()
            flush_s = max(deadline_s - _GOODBYE_S, deadline_s / 2)
            try:
                done, _ = await asyncio.wait({task}, timeout=flush_s)
                if not done:
                    # Stop flushing; the task still publishes ``offline`` and disconnects.
                    self._abandon_flush = True
                    self._wake.set()
                    await asyncio.wait({task}, timeout=deadline_s - flush_s)
            finally:
                if not task.done():
                    # The broker is not answering at all: give up on a clean goodbye.
                    task.cancel()
                    await asyncio.wait({task}, timeout=_GOODBYE_S)
        if self._unsaved:
            log.error("%d MQTT event(s) could not be written to %s and are lost at exit: free space there",
                      len(self._unsaved), self._outbox_path)
        if self._outbox is not None:
            pending = len(self._outbox)
            if pending:
                log.warning("%d MQTT event(s) not delivered yet; kept in %s for the next start",
                            pending, self._outbox.path)
            await asyncio.to_thread(self._outbox.close)
            self._outbox = None

    # -- connection task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(
            BackoffPolicy(self._config.reconnect_initial_s, self._config.reconnect_max_s), self._rng
        )
        failures_in_row = 0
        while not self._closing.is_set():
            connected_at: float | None = None
            try:
                async with self._client() as client:
                    connected_at = time.monotonic()
                    self._connects += 1
                    self._dirty = dict.fromkeys(self._retained)
                    await self._serve(client)
                return  # closing: served until the end
            except Exception as exc:  # an always-on sender retries whatever broke
                error = exc
            finally:
                self._connected.clear()
            if self._closing.is_set():
                return
            if connected_at is not None and time.monotonic() - connected_at >= _STABLE_CONNECTION_S:
                backoff.reset()
            delay_s = backoff.next_delay_s()
            failures_in_row = 1 if connected_at is not None else failures_in_row + 1
            self._log_failure(error, delay_s, was_connected=connected_at is not None,
                              repeat=failures_in_row > 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay_s)

    def _client(self) -> aiomqtt.Client:
        cfg = self._config
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            identifier=cfg.client_id,
            will=aiomqtt.Will(self._topics.status, OFFLINE, qos=1, retain=True),
            keepalive=cfg.keepalive_s,
            tls_context=self._tls_context,
            timeout=_OPERATION_TIMEOUT_S,
        )

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish until closing; a dropped connection surfaces as ``MqttError`` from the watcher."""
        inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        try:
            async with asyncio.TaskGroup() as tasks:
                watcher = tasks.create_task(_wait_disconnected(client, inbox), name="mqtt-connection-watch")
                await client.publish(self._topics.status, ONLINE, qos=1, retain=True)
                self._connected.set()
                log.info("MQTT connected to %s:%d as %s (TLS %s)", self._config.host, self._config.port,
                         self._config.username or "anonymous", "on" if self._tls_context else "off")
                if not self._swept:
                    await self._sweep_stale_discovery(client, inbox)
                await self._pump(client)
                self._connected.clear()
                await client.publish(self._topics.status, OFFLINE, qos=1, retain=True)
                watcher.cancel()
        except* Exception as group:
            # One connection, one cause: re-raise the first failure plainly for ``_run``.
            raise group.exceptions[0] from None

    async def _sweep_stale_discovery(
        self, client: aiomqtt.Client, inbox: asyncio.Queue[aiomqtt.Message],
    ) -> None:
        """Clear (empty retained payload) this node's discovery configs that are no longer published:
        Home Assistant then deletes the entities of a station removed from the config."""
        wildcard = self._topics.discovery_wildcard
        await client.subscribe(wildcard, qos=1)
        retained: list[str] = []
        try:
            async with asyncio.timeout(_SWEEP_MAX_S):
                while True:
                    async with asyncio.timeout(_SWEEP_QUIET_S):
                        message = await inbox.get()
                    if message.retain and message.payload:
                        retained.append(str(message.topic))
        except TimeoutError:
            pass  # quiet: every retained config has arrived
        await client.unsubscribe(wildcard)
        for topic in stale_discovery_topics(self._topics, retained, self._discovery_topics):
            await client.publish(topic, b"", qos=1, retain=True)
            log.info("removed the Home Assistant discovery config %s (no longer configured)", topic)
        self._swept = True

    async def _pump(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            await self._publish_retained(client)
            await self._drain_outbox(client)
            if self._closing.is_set():
                return
            if self._unacked:  # retry the deletes while the disk is full
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _DISK_RETRY_S)
            else:
                await self._wake.wait()

    async def _publish_retained(self, client: aiomqtt.Client) -> None:
        while self._dirty and not self._flush_abandoned():
            topic = next(iter(self._dirty))
            payload = self._retained[topic]
            await client.publish(topic, payload, qos=1, retain=True)
            if self._retained[topic] is payload:  # not replaced while we were publishing
                self._dirty.pop(topic, None)

    async def _drain_outbox(self, client: aiomqtt.Client) -> None:
        """The outbox first (older), then what only memory holds; a failed delete is remembered."""
        outbox = self._require_outbox()
        await self._retry_acks(outbox)
        while not self._flush_abandoned():
            batch = [m for m in await asyncio.to_thread(outbox.peek, _OUTBOX_BATCH + len(self._unacked))
                     if m.seq not in self._unacked]
            if not batch:
                break
            for message in batch:
                if self._flush_abandoned():
                    return
                await client.publish(message.topic, message.payload, qos=1)  # returns after PUBACK
                try:
                    await asyncio.to_thread(outbox.ack, message.seq)
                except (sqlite3.Error, OSError):
                    self._unacked.add(message.seq)  # delivered: deleted later, never resent
                # Counted once the outbox says so too: stats never show an event both delivered
                # and still pending.
                self._delivered += 1
            await self._publish_retained(client)
        async with self._append_lock:
            await self._save_unsaved()
        while self._unsaved and not self._flush_abandoned():
            message_in_memory = self._unsaved[0]
            await client.publish(message_in_memory.topic, message_in_memory.payload, qos=1)
            self._delivered += 1
            if self._unsaved and self._unsaved[0] is message_in_memory:
                self._unsaved.popleft()

    async def _retry_acks(self, outbox: Outbox) -> None:
        for seq in sorted(self._unacked):
            try:
                await asyncio.to_thread(outbox.ack, seq)
            except (sqlite3.Error, OSError):
                return
            self._unacked.discard(seq)

    def _log_failure(self, error: Exception, delay_s: float, *, was_connected: bool, repeat: bool) -> None:
        """Warn once per outage (repeats go to DEBUG); a refused login or a bug is an ERROR every time."""
        where = f"{self._config.host}:{self._config.port}"
        code = getattr(getattr(error, "rc", None), "value", getattr(error, "rc", None))
        if not isinstance(error, aiomqtt.MqttError):
            # Not the broker's doing (a full disk under the outbox, a bug): keep the traceback.
            log.error("MQTT publisher failed: %s (retrying in %.1f s)", error, delay_s, exc_info=error)
        elif (tls_problem := _tls_failure(error)) is not None:
            # Not an outage: retrying will not fix a certificate, so it is an ERROR every time.
            log.error(
                "MQTT broker %s: TLS handshake failed: %s; check mqtt.ca_file (the CA that signed the "
                "broker's certificate) and that mqtt.host is a name in that certificate (retrying in %.1f s)",
                where, tls_problem, delay_s,
            )
        elif isinstance(error, aiomqtt.MqttCodeError) and code in _AUTH_REFUSED_CODES:
            log.error(
                "MQTT broker %s refused the login as %r: %s; check mqtt.username and mqtt.password "
                "(retrying in %.1f s)", where, self._config.username, error, delay_s,
            )
        elif was_connected:
            log.warning("MQTT connection to %s lost: %s (reconnecting in %.1f s)", where, error, delay_s)
        else:
            log.log(logging.DEBUG if repeat else logging.WARNING,
                    "MQTT broker %s unreachable: %s (retrying in %.1f s)", where, error, delay_s)

    # -- helpers -----------------------------------------------------------------------------------

    def _flush_abandoned(self) -> bool:
        """``close()`` ran out of flush time: stop publishing, say ``offline`` and disconnect."""
        return self._abandon_flush

    def _set_retained(self, topic: str, payload: bytes) -> None:
        self._retained[topic] = payload
        self._dirty[topic] = None

    def _require_outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("MqttPublisher is not running: call start() first (or it was closed)")
        return self._outbox

    def _make_tls_context(self) -> ssl.SSLContext | None:
        if not self._config.tls:
            return None
        ca_file = self._config.ca_file
        try:
            return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt.ca_file: cannot load CA bundle {ca_file}: {exc}") from None


def _tls_failure(error: BaseException) -> str | None:
    """The TLS reason behind a connection failure (certificate not trusted, wrong host name)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return str(getattr(current, "verify_message", None) or current.reason or current)
        if "CERTIFICATE_VERIFY_FAILED" in str(current) or "certificate verify failed" in str(current):
            return str(current)
        current = current.__cause__ or current.__context__
    return None


async def _wait_disconnected(client: aiomqtt.Client, inbox: asyncio.Queue[aiomqtt.Message]) -> None:
    """Raise ``MqttError`` as soon as the connection drops; hands the few messages of the discovery
    sweep (the only subscription, held for a moment after connecting) to ``inbox``."""
    async for message in client.messages:
        inbox.put_nowait(message)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("MQTT publisher task stopped", exc_info=task.exception())
