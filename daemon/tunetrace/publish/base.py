"""Where the live pipeline's decisions go: the ``EventSink`` Protocol and a logging sink.

The recognition pipeline only knows this Protocol; the play log and MQTT publisher implement it,
and the service fans every call out to all configured sinks (``FanoutSink``).  Keeping the
interface this small lets tests collect events with a plain in-memory sink instead of a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol

from tunetrace.events import Play, PlayEvent, StationHealth

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where decisions go. The service calls ``start`` once before the first event and ``close``
    once at the end of shutdown; the publish methods in between must not block on a network."""

    async def start(self) -> None:
        """Open files and connections (a broker connects in the background: return at once)."""
        ...

    async def publish_event(self, event: PlayEvent) -> None:
        """``play_started`` / ``play_ended``; an implementation must not lose it (persist or retry)."""
        ...

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        """The station's current play; ``None`` means nothing recognised is playing."""
        ...

    async def publish_health(self, station: str, health: StationHealth) -> None: ...

    async def close(self, deadline_s: float) -> None:
        """Flush what is pending within ``deadline_s`` (what is left of the service's shutdown
        budget) and release resources; what cannot be flushed in time must stay recoverable."""
        ...


class LogSink:
    """Logs every call: the sink used when MQTT is not configured (the play log still records plays)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log

    async def publish_event(self, event: PlayEvent) -> None:
        play = event.play
        if event.kind == "play_started":
            self._log.info(
                "started %r by %r at position %.1f s (confidence %.2f, began %s)",
                play.title, play.artist, play.position_start_s, play.confidence,
                play.started_at.isoformat(timespec="seconds"), extra={"station": play.station},
            )
        else:
            self._log.info(
                "ended %r after %.1f s (position %.1f s)",
                play.title, play.duration_s or 0.0, play.position_end_s or 0.0,
                extra={"station": play.station},
            )

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        self._log.debug("now playing %s", play.title if play else "nothing", extra={"station": station})

    async def publish_health(self, station: str, health: StationHealth) -> None:
        self._log.debug("health %s", health, extra={"station": station})

    async def start(self) -> None:
        return None

    async def close(self, deadline_s: float) -> None:
        return None


class FanoutSink:
    """Hands every call to each sink in order; one failing sink is logged and does not starve the others."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self._sinks = tuple(sinks)

    async def publish_event(self, event: PlayEvent) -> None:
        for sink in self._sinks:
            await _guarded(sink.publish_event(event), sink, "publish_event")

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        for sink in self._sinks:
            await _guarded(sink.publish_now_playing(station, play), sink, "publish_now_playing")

    async def publish_health(self, station: str, health: StationHealth) -> None:
        for sink in self._sinks:
            await _guarded(sink.publish_health(station, health), sink, "publish_health")

    async def start(self) -> None:
        for sink in self._sinks:
            await _guarded(sink.start(), sink, "start")

    async def close(self, deadline_s: float) -> None:
        """Each sink in order gets what is left of ``deadline_s``."""
        deadline = time.monotonic() + deadline_s
        for sink in self._sinks:
            await _guarded(sink.close(max(0.0, deadline - time.monotonic())), sink, "close")


async def _guarded(call: Awaitable[None], sink: object, what: str) -> None:
    """Await ``call``; an ordinary exception is logged, cancellation propagates."""
    try:
        await call
    except Exception:
        log.exception("sink %s failed in %s", type(sink).__name__, what)
