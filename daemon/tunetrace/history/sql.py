"""The history in SQL, shared by the SQLite and PostgreSQL backends (DB-API connections).

One schema serves both: times are UTC seconds since the epoch (``DOUBLE PRECISION``), so range
queries and the retention are plain comparisons on either database, and a report reads a fleet's
shared PostgreSQL history exactly as it reads a local SQLite file.  Each write commits at once: a
crash loses at most the checkpoint being written.  The backends differ only in their
``Dialect`` (placeholders, the lock that serialises two daemons creating the schema).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import uuid4

from tunetrace.errors import HistoryError
from tunetrace.events import END_REASONS, EndReason, Play
from tunetrace.history.base import Checkpoint, Purged, StationInterval

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS history_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS plays (
        play_id TEXT PRIMARY KEY,
        station TEXT NOT NULL,
        track_id BIGINT NOT NULL,
        isrc TEXT,
        title TEXT NOT NULL,
        artist TEXT NOT NULL,
        album TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        position_start_s DOUBLE PRECISION NOT NULL,
        confidence DOUBLE PRECISION NOT NULL,
        speed_ratio DOUBLE PRECISION,
        ended_at DOUBLE PRECISION,
        position_end_s DOUBLE PRECISION,
        end_reason TEXT,
        resumed_at DOUBLE PRECISION,
        last_evidence_at DOUBLE PRECISION,
        last_position_s DOUBLE PRECISION
    )""",
    """CREATE INDEX IF NOT EXISTS plays_station_started ON plays (station, started_at)""",
    """CREATE INDEX IF NOT EXISTS plays_started ON plays (started_at)""",
    """CREATE TABLE IF NOT EXISTS station_intervals (
        interval_id TEXT PRIMARY KEY,
        station TEXT NOT NULL,
        source_up INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS intervals_station_started ON station_intervals (station, started_at)""",
)

_PLAY_COLUMNS = (
    "play_id", "station", "track_id", "title", "artist", "album", "started_at", "position_start_s",
    "confidence", "speed_ratio", "ended_at", "position_end_s", "end_reason", "resumed_at", "isrc",
)
_SELECT_PLAY = f"SELECT {', '.join(_PLAY_COLUMNS)} FROM plays"  # noqa: S608 - constant column names

class Connection(Protocol):
    """What the store uses of a DB-API connection (sqlite3 and psycopg both provide it)."""

    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...

@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str
    """``?`` (sqlite3) or ``%s`` (psycopg)."""
    schema_lock: str | None = None
    """Run before creating the schema, in the same transaction (two daemons starting at once)."""

def epoch(at: datetime) -> float:
    return at.timestamp()

def from_epoch(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)

class SqlHistory:
    """``HistoryStore`` over one DB-API connection; callers serialise calls (one at a time)."""

    def __init__(self, connection: Connection, dialect: Dialect, where: str) -> None:
        self._db = connection
        self._dialect = dialect
        self._where = where
        """The store's location without secrets, for errors."""
        self._current: dict[str, tuple[str, bool]] = {}
        """Per station: this process's current interval id and whether the source was up."""
        self._create_schema()

    # -- writes ---------------------------------------------------------------------------------

    def record_play(self, play: Play) -> None:
        values = (
            play.play_id, play.station, play.track_id, play.title, play.artist, play.album,
            epoch(play.started_at), play.position_start_s, play.confidence, play.speed_ratio,
            None if play.ended_at is None else epoch(play.ended_at), play.position_end_s,
            play.end_reason, None if play.resumed_at is None else epoch(play.resumed_at),
            play.isrc or None,
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in _PLAY_COLUMNS[1:])
        self._write(
            f"INSERT INTO plays ({', '.join(_PLAY_COLUMNS)}) VALUES ({self._marks(len(values))}) "  # noqa: S608
            f"ON CONFLICT (play_id) DO UPDATE SET {updates}",
            values,
        )

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        at = epoch(checkpoint.at)
        statements: list[tuple[str, tuple[Any, ...]]] = []
        current = self._current.get(checkpoint.station)
        if current is not None and current[1] == checkpoint.source_up:
            statements.append((self._q("UPDATE station_intervals SET ended_at = ? WHERE interval_id = ?"),
                               (at, current[0])))
        else:
            if current is not None:
                statements.append((self._q(
                    "UPDATE station_intervals SET ended_at = ? WHERE interval_id = ?"), (at, current[0])))
            interval_id = uuid4().hex
            statements.append((self._q(
                "INSERT INTO station_intervals (interval_id, station, source_up, started_at, ended_at) "
                "VALUES (?, ?, ?, ?, ?)"),
                (interval_id, checkpoint.station, int(checkpoint.source_up), at, at)))
            self._current[checkpoint.station] = (interval_id, checkpoint.source_up)
        if checkpoint.play_id is not None and checkpoint.evidence_at is not None:
            statements.append((self._q(
                "UPDATE plays SET last_evidence_at = ?, last_position_s = ? "
                "WHERE play_id = ? AND ended_at IS NULL"),
                (epoch(checkpoint.evidence_at), checkpoint.position_s, checkpoint.play_id)))
        self._transaction(statements)

    def recover(self, stations: Sequence[str]) -> list[Play]:
        if not stations:
            return []
        rows = self._read(
            f"SELECT {', '.join(_PLAY_COLUMNS)}, last_evidence_at, last_position_s FROM plays "  # noqa: S608
            f"WHERE ended_at IS NULL AND station IN ({self._marks(len(stations))})",
            tuple(stations),
        )
        recovered = []
        for row in rows:
            play = self._play(row[: len(_PLAY_COLUMNS)])
            evidence_at = from_epoch(row[-2]) or play.started_at
            position_s = row[-1] if row[-1] is not None else play.position_start_s
            closed = play.ended(max(evidence_at, play.started_at), position_s, "crash_recovered")
            self.record_play(closed)
            recovered.append(closed)
        return recovered

    def purge(self, before: datetime) -> Purged:
        cutoff = epoch(before)
        plays = self._write(
            self._q("DELETE FROM plays WHERE ended_at IS NOT NULL AND ended_at < ?"), (cutoff,))
        intervals = self._write(self._q("DELETE FROM station_intervals WHERE ended_at < ?"), (cutoff,))
        return Purged(plays, intervals)

    # -- reads ----------------------------------------------------------------------------------

    def last_play(self, station: str) -> Play | None:
        rows = self._read(self._q(f"{_SELECT_PLAY} WHERE station = ? ORDER BY started_at DESC LIMIT 1"),
                          (station,))
        return self._play(rows[0]) if rows else None

    def plays(self, start: datetime, end: datetime, stations: Sequence[str] = ()) -> list[Play]:
        sql = self._q(f"{_SELECT_PLAY} WHERE started_at >= ? AND started_at < ?")
        params: list[Any] = [epoch(start), epoch(end)]
        if stations:
            sql += f" AND station IN ({self._marks(len(stations))})"
            params.extend(stations)
        return [self._play(row) for row in self._read(sql + " ORDER BY started_at, station", tuple(params))]

    def intervals(
        self, start: datetime, end: datetime, stations: Sequence[str] = (),
    ) -> list[StationInterval]:
        sql = self._q("SELECT station, source_up, started_at, ended_at FROM station_intervals "
                      "WHERE ended_at > ? AND started_at < ?")
        params: list[Any] = [epoch(start), epoch(end)]
        if stations:
            sql += f" AND station IN ({self._marks(len(stations))})"
            params.extend(stations)
        rows = self._read(sql + " ORDER BY started_at", tuple(params))
        return [
            StationInterval(str(s), bool(up), _at(started), _at(ended)) for s, up, started, ended in rows
        ]

    def close(self) -> None:
        self._db.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _q(self, sql: str) -> str:
        return sql.replace("?", self._dialect.placeholder)

    def _marks(self, count: int) -> str:
        return ", ".join([self._dialect.placeholder] * count)

    def _play(self, row: Sequence[Any]) -> Play:
        values = dict(zip(_PLAY_COLUMNS, row, strict=True))
        reason = values["end_reason"]
        return Play(
            play_id=str(values["play_id"]), station=str(values["station"]), track_id=int(values["track_id"]),
            title=str(values["title"]), artist=str(values["artist"]), album=str(values["album"]),
            started_at=_at(values["started_at"]), position_start_s=float(values["position_start_s"]),
            confidence=float(values["confidence"]), ended_at=from_epoch(values["ended_at"]),
            position_end_s=values["position_end_s"], speed_ratio=values["speed_ratio"],
            end_reason=_reason(reason), resumed_at=from_epoch(values["resumed_at"]),
            isrc=str(values["isrc"] or ""),
        )

    def _create_schema(self) -> None:
        statements: list[tuple[str, tuple[Any, ...]]] = []
        if self._dialect.schema_lock:
            statements.append((self._dialect.schema_lock, ()))
        statements.extend((sql, ()) for sql in SCHEMA)
        statements.append((self._q(
            "INSERT INTO history_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"),
            ("schema_version", SCHEMA_VERSION)))
        self._transaction(statements)
        rows = self._read(self._q("SELECT value FROM history_meta WHERE key = ?"), ("schema_version",))
        found = rows[0][0] if rows else None
        if found != SCHEMA_VERSION:
            raise HistoryError(
                f"{self._where}: history schema version {found!r}, this tunetrace writes {SCHEMA_VERSION!r}; "
                "point history.url at a new database or upgrade tunetrace"
            )

    def _transaction(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> int:
        try:
            cursor = self._db.cursor()
            changed = 0
            for sql, params in statements:
                cursor.execute(sql, params)
                changed += max(0, cursor.rowcount or 0)
            self._db.commit()
        except HistoryError:
            raise
        except Exception as exc:
            self._safe_rollback()
            raise HistoryError(f"{self._where}: history write failed: {_describe(exc)}") from exc
        return changed

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        return self._transaction([(sql, params)])

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Sequence[Any]]:
        try:
            cursor = self._db.cursor()
            cursor.execute(sql, params)
            rows: list[Sequence[Any]] = cursor.fetchall()
            self._db.commit()  # end the read transaction (PostgreSQL would keep it open)
        except Exception as exc:
            self._safe_rollback()
            raise HistoryError(f"{self._where}: history read failed: {_describe(exc)}") from exc
        return rows

    def _safe_rollback(self) -> None:
        try:
            self._db.rollback()
        except Exception:  # the original error is what matters
            log.debug("rollback failed", exc_info=True)

def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)

def _reason(value: object) -> EndReason | None:
    for reason in END_REASONS:
        if value == reason:
            return reason
    return None

def _describe(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
