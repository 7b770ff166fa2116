"""``HistorySink``: the live pipeline's way into the history (an ``EventSink`` plus checkpoints).

* ``start()`` opens the store, applies the retention (deletions are logged with their counts),
  and closes the plays this daemon's stations left open at a crash (``crash_recovered``, at their
  last checkpointed evidence); the service publishes their ``play_ended`` to the other sinks.
* ``publish_event`` writes each start and end (a resumed play updates its row).
* ``checkpoint`` (every ``history.checkpoint_interval_s`` of stream time per station) extends the
  station's up/down interval and records the open play's last evidence.

Writes run in a worker thread, one at a time.  A failing store is logged, never fatal: the
stations keep monitoring and the play log still records every event.
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
        await self._call("record the play", lambda store: store.record_play(event.play))

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        await self._call("checkpoint", lambda store: store.checkpoint(checkpoint))
        now = self._clock()
        if self._last_purge is not None and now - self._last_purge >= PURGE_EVERY:
            await self._purge()

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        return None

    async def publish_health(self, station: str, health: StationHealth) -> None:
        return None

    async def close(self, deadline_s: float) -> None:
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
        purged = await self._call("apply the retention", lambda store: store.purge(cutoff))
        if purged is not None and (purged.plays or purged.intervals):
            log.info("history retention (%d days): deleted %d play(s) and %d station interval(s) "
                     "that ended before %s", days, purged.plays, purged.intervals,
                     cutoff.isoformat(timespec="seconds"))

    async def _call(self, what: str, call: Callable[[HistoryStore], T]) -> T | None:
        async with self._lock:
            store = self._store
            if store is None:
                log.error("history: cannot %s: the history is not open", what)
                return None
            try:
                return await asyncio.to_thread(call, store)
            except HistoryError as exc:
                log.error("history: cannot %s: %s", what, exc)
                return None
