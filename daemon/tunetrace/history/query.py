"""Past plays from the history for the HTTP API (``/api/plays``): the record, not the log.

Each query opens its own read connection (the daemon's writer keeps its own), so a slow request
never holds the writer up; a few milliseconds per request for SQLite, a connect for PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tunetrace.events import Play
from tunetrace.history import open_history

LONGEST_PLAY = timedelta(days=2)
"""How far before ``start`` a play may have begun and still overlap it: the store is indexed by
start time, so plays that began earlier are fetched from this far back and filtered here."""
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)


class HistoryPlayQuery:
    """``observe.http.PlayQuery`` over the play history at ``url`` (blocking: call in a thread)."""

    def __init__(self, url: str) -> None:
        self._url = url

    def plays(self, station: str | None, start: datetime | None, end: datetime | None) -> list[Play]:
        """Plays of ``station`` (``None``: all) overlapping ``[start, end]``, oldest first; an open
        play overlaps everything after its start."""
        since = start - LONGEST_PLAY if start is not None else _EARLIEST
        until = end + timedelta(microseconds=1) if end is not None else _LATEST
        store = open_history(self._url)
        try:
            found = store.plays(since, until, [station] if station else ())
        finally:
            store.close()
        return [
            p for p in found
            if start is None or p.ended_at is None or p.ended_at >= start
        ]
