"""The play history's values and the ``HistoryStore`` Protocol every backend implements.

The history is the source of truth for what was aired and when each station was monitored: plays
(with why each ended) and station intervals (contiguous spans with the source up, or down, while a
daemon ran the station).  Time the daemon did not run is in no interval: a report states it as
neither monitored nor down.  Backends are blocking (DB-API) and called from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from tunetrace.events import INTERRUPTIONS, Play


@dataclass(frozen=True)
class StationInterval:
    """A span during which a daemon ran ``station`` with its source up (or down)."""

    station: str
    source_up: bool
    started_at: datetime
    ended_at: datetime
    """The last checkpoint of the span (a crash loses at most ``checkpoint_interval_s``)."""

    @property
    def seconds(self) -> float:
        return max(0.0, (self.ended_at - self.started_at).total_seconds())


@dataclass(frozen=True)
class Checkpoint:
    """One station's state at ``at``: recorded every ``checkpoint_interval_s``."""

    station: str
    at: datetime
    source_up: bool
    play_id: str | None = None
    """The open play, if any, whose evidence is reported below."""
    evidence_at: datetime | None = None
    """Wall time of the open play's latest supporting audio (where a crash would end it)."""
    position_s: float | None = None
    """Track position at ``evidence_at``."""


@dataclass(frozen=True)
class Purged:
    plays: int
    intervals: int


class ProgressSink(Protocol):
    """Where a station reports its state every ``checkpoint_interval_s`` (the history)."""

    async def checkpoint(self, checkpoint: Checkpoint) -> None: ...


class HistoryStore(Protocol):
    """A durable history of plays and station intervals (SQLite or PostgreSQL)."""

    def record_play(self, play: Play) -> None:
        """Insert or update the play by ``play_id`` (a start, an end, a resumed play)."""
        ...

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Extend the station's current interval to ``at`` (a new one when ``source_up`` changed,
        or at the first checkpoint of this process) and store the open play's last evidence."""
        ...

    def recover(self, stations: Sequence[str]) -> list[Play]:
        """Close the plays of ``stations`` left open by a crash at their last evidence, with
        ``end_reason="crash_recovered"``; returns them closed (for their ``play_ended``)."""
        ...

    def last_play(self, station: str) -> Play | None:
        """The station's most recently started play."""
        ...

    def plays(self, start: datetime, end: datetime, stations: Sequence[str] = ()) -> list[Play]:
        """Plays that started in ``[start, end)`` (all stations when ``stations`` is empty)."""
        ...

    def intervals(
        self, start: datetime, end: datetime, stations: Sequence[str] = (),
    ) -> list[StationInterval]:
        """Intervals that overlap ``[start, end)``, unclipped."""
        ...

    def purge(self, before: datetime) -> Purged:
        """Delete plays and intervals that ended before ``before`` (retention)."""
        ...

    def close(self) -> None: ...


def resumable(previous: Play | None) -> Play | None:
    """``previous`` if an interruption (not the music) ended it, so that it may be continued."""
    if previous is None or previous.ended_at is None or previous.end_reason not in INTERRUPTIONS:
        return None
    return previous


def continues(
    previous: Play, track_id: int, started_at: datetime, position_start_s: float,
    *, within_s: float, position_tolerance_s: float, heard_on_resumption: bool = False,
) -> bool:
    """Whether a new play is the interrupted ``previous`` airing heard again: the same recording,
    starting at most ``within_s`` after ``previous`` ended, at the position the clock predicts.

    ``heard_on_resumption``: the recording was already playing when monitoring resumed (its
    evidence starts with the first audio).  Then the position need not match: a recording that
    repeats itself (a loop, an ambient piece) matches at several positions, and after a restart the
    tracker has lost the memory of which repeat it was at (it keeps it within a run).  A station
    cannot have started the same recording again during a gap it was already playing it in.
    """
    if previous.ended_at is None or previous.position_end_s is None or previous.track_id != track_id:
        return False
    gap_s = (started_at - previous.ended_at).total_seconds()
    if not -position_tolerance_s <= gap_s <= within_s:
        return False
    if heard_on_resumption:
        return True
    predicted_s = previous.position_end_s + gap_s
    return abs(position_start_s - predicted_s) <= position_tolerance_s


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
