"""The default history: an SQLite file through the standard library (no server, no dependency).

WAL journal with ``synchronous=NORMAL``: a committed play survives a process crash (kill -9) and
at most the last commit is lost on a power cut; readers (``tunetrace report``) never block the
daemon.  A busy timeout lets a report and the daemon share the file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tunetrace.errors import HistoryError
from tunetrace.history.sql import Dialect, SqlHistory

SQLITE = Dialect("sqlite", "?")
BUSY_TIMEOUT_S = 10.0


def open_sqlite(path: Path) -> SqlHistory:
    """Open (creating the file and its folder if needed) the SQLite history at ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
    except (OSError, sqlite3.Error) as exc:
        raise HistoryError(
            f"cannot open the SQLite history {path}: {exc}; check that the folder is writable "
            "or set history.url"
        ) from None
    return SqlHistory(connection, SQLITE, str(path))
