"""The status board: an ``EventSink`` that remembers each station's now-playing and recent plays.

The service fans every play event out to it like to the play log and MQTT, so the HTTP API and
the status page answer from memory (bounded: ``http.recent_plays`` per station), never from disk
or the broker.
"""

from __future__ import annotations

from collections import deque

from tunetrace.events import Play, PlayEvent, StationHealth


class StatusBoard:
    def __init__(self, recent_plays: int) -> None:
        self._limit = recent_plays
        self._recent: dict[str, deque[Play]] = {}
        self._now: dict[str, Play | None] = {}

    def now_playing(self, station: str) -> Play | None:
        return self._now.get(station)

    def recent_plays(self, station: str) -> tuple[Play, ...]:
        """Newest first; an open play appears once, replaced by its ended record when it ends."""
        return tuple(reversed(self._recent.get(station, ())))

    # -- EventSink -------------------------------------------------------------------------------

    async def start(self) -> None:
        return None

    async def publish_event(self, event: PlayEvent) -> None:
        play = event.play
        recent = self._recent.setdefault(play.station, deque(maxlen=self._limit))
        if recent and recent[-1].play_id == play.play_id:
            recent[-1] = play  # the ended record replaces the started one
        else:
            recent.append(play)

    async def publish_now_playing(self, station: str, play: Play | None) -> None:
        self._now[station] = play

    async def publish_health(self, station: str, health: StationHealth) -> None:
        return None

    async def close(self, deadline_s: float) -> None:
        return None
