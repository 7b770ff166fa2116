"""A bounded, durable FIFO of MQTT messages that must reach the broker (play events).

Why it exists: a play is a billing/royalty record for the people who monitor a station; a broker
restart, a network outage or a daemon restart must not lose it.  The publisher appends every event
here *before* it tries the network and removes it only after the broker acknowledged it (QoS 1
PUBACK), so an event is delivered at least once, in the order it was produced; its ``event_id``
lets consumers drop the rare duplicate (an acknowledgement lost in a connection drop).

Storage is one SQLite file from the standard library (no extra dependency, crash-safe): WAL
journal with ``synchronous=FULL``, so every committed append or acknowledgement has been fsync'd
before the call returns.  Sequence numbers come from ``AUTOINCREMENT`` and are never reused, so
order survives restarts.

Overflow policy: at most ``max_events`` messages wait; appending one more drops the *oldest*
(the newest events are the ones a consumer most likely still needs for "now playing"
decisions) and adds it to a persisted ``dropped_total`` counter, which is logged and reported
in ``stats()``.

The class is synchronous and thread-safe; async callers run its methods in a worker thread
(``asyncio.to_thread``) so disk I/O never blocks the event loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        message_id TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped_total', 0)",
)


@dataclass(frozen=True)
class OutboxMessage:
    """One message waiting for the broker's acknowledgement."""

    seq: int
    """Position in the outbox; strictly increasing, never reused."""
    topic: str
    payload: bytes
    message_id: str
    """The event's ``event_id``: lets consumers recognise a redelivered duplicate."""


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    """Messages waiting for an acknowledgement."""
    dropped_total: int
    """Messages discarded by the overflow policy since the outbox file was created."""


class Outbox:
    """Durable FIFO of messages: ``append`` -> ``peek`` -> (publish, PUBACK) -> ``ack``."""

    def __init__(self, path: Path, max_events: int) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._path = path
        self._max_events = max_events
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the worker threads, serialised by ``_lock``.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._transaction():
            for statement in _SCHEMA:
                self._db.execute(statement)
        self._pending = int(self._db.execute("SELECT count(*) FROM messages").fetchone()[0])
        self._dropped_total = int(
            self._db.execute("SELECT value FROM counters WHERE name = 'dropped_total'").fetchone()[0]
        )
        if self._pending:
            log.info("outbox %s: %d undelivered message(s) from an earlier run", path, self._pending)

    @property
    def path(self) -> Path:
        return self._path

    def append(self, topic: str, payload: bytes, message_id: str) -> int:
        """Store one message durably; returns how many old messages the overflow policy dropped."""
        with self._lock:
            excess = max(0, self._pending + 1 - self._max_events)
            with self._transaction():
                self._db.execute(
                    "INSERT INTO messages (topic, payload, message_id) VALUES (?, ?, ?)",
                    (topic, payload, message_id),
                )
                if excess:
                    self._db.execute(
                        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages ORDER BY seq LIMIT ?)",
                        (excess,),
                    )
                    self._db.execute(
                        "UPDATE counters SET value = value + ? WHERE name = 'dropped_total'", (excess,)
                    )
            self._pending += 1 - excess
            self._dropped_total += excess
        if excess:
            log.warning(
                "outbox %s is full (%d messages): dropped the %d oldest undelivered message(s)",
                self._path, self._max_events, excess,
            )
        return excess

    def peek(self, limit: int) -> list[OutboxMessage]:
        """The oldest ``limit`` messages, oldest first; they stay stored until ``ack``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, message_id FROM messages ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [OutboxMessage(seq=r[0], topic=r[1], payload=bytes(r[2]), message_id=r[3]) for r in rows]

    def ack(self, seq: int) -> None:
        """Forget message ``seq`` (the broker has it).  Unknown or already dropped: no-op."""
        with self._lock:
            with self._transaction():
                deleted = self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,)).rowcount
            self._pending -= deleted

    def stats(self) -> OutboxStats:
        """Counts kept in memory (no disk access): cheap enough to call from the event loop."""
        with self._lock:
            return OutboxStats(pending=self._pending, dropped_total=self._dropped_total)

    def __len__(self) -> int:
        return self._pending

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
