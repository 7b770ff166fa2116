"""``HistorySink``: the live pipeline's way into the history (an ``EventSink`` plus checkpoints).

* ``start()`` opens the store, applies the retention (deletions are logged with their counts),
  and closes the plays this daemon's stations left open at a crash (``crash_recovered``, at their
  last checkpointed evidence); the service publishes their ``play_ended`` to the other sinks.
* ``publish_event`` writes each start and end (a resumed play updates its row).
* ``checkpoint`` (every ``history.checkpoint_interval_s`` of stream time per station) extends the
  station's up/down interval and records the open play's last evidence.

Writes run in a worker thread, one at a time.  A failing store is logged, never fatal: the
stations keep monitoring and the play log still records every event.  Plays that could not be
written are kept (the latest state of each, up to ``MAX_UNWRITTEN_PLAYS``) and written once the
store answers again; the store is reopened (a new PostgreSQL connection) at most every
``REOPEN_EVERY``.  Checkpoints are not kept: monitored time while the database is unreachable is
not recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from tunetrace.config import HistoryConfig
from tunetrace.errors import HistoryError
from tunetrace.events import Play, PlayEvent, StationHealth
from tunetrace.history.base import Checkpoint, HistoryStore, redact_url

log = logging.getLogger(__name__)

PURGE_EVERY = timedelta(hours=1)
"""How often the retention runs while the daemon is up (it also runs at start)."""
REOPEN_EVERY = timedelta(seconds=5)
"""After a failed write, how long to wait before reopening the store."""
MAX_UNWRITTEN_PLAYS = 10_000
"""Plays kept in memory while the store cannot be written (oldest dropped beyond, logged)."""

T = TypeVar("T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class HistorySink:
    """Writes plays and station checkpoints to a ``HistoryStore``."""

    def __init__(
        self,
        open_store: Callable[[], HistoryStore],
        stations: Sequence[str],
        config: HistoryConfig,
        *,
        where: str = "history",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._open_store = open_store
        self._stations = tuple(stations)
        self._config = config
        self._where = where
        self._clock = clock
        self._store: HistoryStore | None = None
        self._lock = asyncio.Lock()
        self._last_purge: datetime | None = None
        self.recovered: list[Play] = []
        """Plays closed at start with ``crash_recovered`` (for their ``play_ended``)."""
        self._last_plays: dict[str, Play | None] = {}
        self._unwritten: dict[str, Play] = {}
        """Plays whose latest state the store has not accepted yet, by ``play_id``."""
        self._failed_at: datetime | None = None
        """When the store last failed (``None``: it works)."""

    @classmethod
    def from_url(
        cls, url: str, stations: Sequence[str], config: HistoryConfig,
        *, clock: Callable[[], datetime] = _utc_now,
    ) -> HistorySink:
        from tunetrace.history import open_history

        return cls(lambda: open_history(url), stations, config, where=redact_url(url), clock=clock)

    @property
    def checkpoint_interval_s(self) -> float:
        return self._config.checkpoint_interval_s

    async def start(self) -> None:
        """Open the store, apply the retention, close what a crash left open. Raises
        ``HistoryError`` when the store cannot be opened (the daemon must not run without it).
        Idempotent: the service starts the history before the other sinks, then all of them."""
        if self._store is not None:
            return
        self._store = await asyncio.to_thread(self._open_store)
        await self._purge()
        self.recovered = await asyncio.to_thread(self._store.recover, self._stations)
        for play in self.recovered:
            log.warning(
                "%s: play of %r left open by a crash closed at its last evidence %s (crash_recovered)",
                play.station, play.title, play.ended_at,
            )
        store = self._store
        self._last_plays = {
            s: await asyncio.to_thread(store.last_play, s) for s in self._stations
        }
        log.info("play history: %s", self._where)

    def last_play(self, station: str) -> Play | None:
        """The station's latest play as it stood at start (after crash recovery)."""
        return self._last_plays.get(station)

    async def publish_event(self, event: PlayEvent) -> None:
        play = event.play
        self._unwritten.pop(play.play_id, None)
        self._unwritten[play.play_id] = play
        if len(self._unwritten) > MAX_UNWRITTEN_PLAYS:
            dropped = next(iter(self._unwritten))
            del self._unwritten[dropped]
            log.error("history: unreachable too long; play %s dropped from the history (the play log "
                      "has it)", dropped)
        await self._flush()

    async def _flush(self) -> None:
        """Write the plays the store has not accepted yet, oldest first."""
        while self._unwritten:
            play_id, play = next(iter(self._unwritten.items()))
            written = await self._call("record the play", _recording(play))
            if written is None:
                return
            if self._unwritten.get(play_id) is play:
                del self._unwritten[play_id]

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        if self._unwritten:
            await self._flush()
        await self._call("checkpoint", lambda store: store.checkpoint(checkpoint))
        now = self._clock()
        if self._last_purge is not None and now - self._last_purge >= PURGE_EVERY:
            await self._purge()

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        return None

    async def publish_health(self, station: str, health: StationHealth) -> None:
        return None

    async def close(self, deadline_s: float) -> None:
        if self._unwritten:
            await self._flush()
            if self._unwritten:
                log.error("history: %d play(s) could not be written before shutdown (the play log "
                          "has them)", len(self._unwritten))
        async with self._lock:
            if self._store is not None:
                await asyncio.to_thread(self._store.close)
                self._store = None

    async def _purge(self) -> None:
        self._last_purge = self._clock()
        days = self._config.retention_days
        if days is None:
            return
        cutoff = self._last_purge - timedelta(days=days)
        result = await self._call("apply the retention", lambda store: store.purge(cutoff))
        purged = result[0] if result is not None else None
        if purged is not None and (purged.plays or purged.intervals):
            log.info("history retention (%d days): deleted %d play(s) and %d station interval(s) "
                     "that ended before %s", days, purged.plays, purged.intervals,
                     cutoff.isoformat(timespec="seconds"))

    async def _call(self, what: str, call: Callable[[HistoryStore], T]) -> tuple[T] | None:
        """``(result,)``, or ``None`` when the store failed (logged once per outage)."""
        async with self._lock:
            store = await self._usable_store()
            if store is None:
                return None
            try:
                result = await asyncio.to_thread(call, store)
            except HistoryError as exc:
                if self._failed_at is None:
                    log.error("history: cannot %s: %s; retrying every %.0f s", what, exc,
                              REOPEN_EVERY.total_seconds())
                self._failed_at = self._clock()
                return None
            if self._failed_at is not None:
                log.warning("history: %s answers again", self._where)
                self._failed_at = None
            return (result,)

    async def _usable_store(self) -> HistoryStore | None:
        """The open store; after a failure, a reopened one once ``REOPEN_EVERY`` has passed."""
        if self._store is None or self._failed_at is None:
            return self._store
        if self._clock() - self._failed_at < REOPEN_EVERY:
            return None
        old, self._store = self._store, None
        try:
            await asyncio.to_thread(old.close)
        except Exception:  # a broken connection may fail to close; it is dropped either way
            log.debug("closing the failed history store", exc_info=True)
        try:
            self._store = await asyncio.to_thread(self._open_store)
        except HistoryError as exc:
            log.debug("history still unreachable: %s", exc)
            self._failed_at = self._clock()
            self._store = old  # closed; the next attempt replaces it again
            return None
        return self._store


def _recording(play: Play) -> Callable[[HistoryStore], None]:
    def record(store: HistoryStore) -> None:
        store.record_play(play)

    return record
