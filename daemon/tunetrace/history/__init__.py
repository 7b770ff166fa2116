"""The play history: plays with their end reasons and station up/down intervals, durable.

``open_history(url)`` opens SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://...``);
``HistorySink`` feeds it from the live pipeline; ``tunetrace.history.report`` aggregates it.
"""

from __future__ import annotations

from pathlib import Path

from tunetrace.errors import HistoryError
from tunetrace.history.base import (
    Checkpoint,
    HistoryStore,
    ProgressSink,
    Purged,
    StationInterval,
    continues,
    redact_url,
    resumable,
)

__all__ = [
    "Checkpoint",
    "HistoryStore",
    "ProgressSink",
    "Purged",
    "StationInterval",
    "continues",
    "open_history",
    "redact_url",
    "resumable",
]


def open_history(url: str) -> HistoryStore:
    """Blocking: open the history at ``url`` (``sqlite:///...`` or ``postgresql://...``)."""
    if url.startswith("sqlite:///"):
        from tunetrace.history.sqlite import open_sqlite

        # sqlite:///var/lib/h.sqlite3 and sqlite:////var/lib/h.sqlite3 both mean /var/lib/h.sqlite3.
        return open_sqlite(Path("/" + url.removeprefix("sqlite:///").lstrip("/")))
    if url.startswith(("postgresql://", "postgres://")):
        from tunetrace.history.postgres import open_postgres

        return open_postgres(url)
    raise HistoryError(
        f"history url {redact_url(url)!r}: unknown scheme; use sqlite:///absolute/path.sqlite3 or "
        "postgresql://user@host:5432/database"
    )
