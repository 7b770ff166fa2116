"""Log lines for people and for machines: each names its station, journald gets priorities.

* **Station**: the pipeline runs each station's tasks inside ``station_scope(name)``; a filter copies
  the name onto every record those tasks log (``record.station``), so a line about a source, a
  search or a play always says which station it is about without each call repeating it.
* **journald**: when stderr *is* the journal (systemd sets ``JOURNAL_STREAM`` to stderr's
  ``device:inode``), every line starts with its ``<priority>`` (``<3>`` error ... ``<7>`` debug)
  and carries no timestamp (the journal has its own), so ``journalctl -p warning`` works.
* **JSON lines** (``log_format: json``): one object per line, ``time level logger station
  message`` (+ ``exception``), for Loki or Elasticsearch.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

from tunetrace.redact import redact_text

LogFormat = Literal["text", "json"]

station_context: ContextVar[str | None] = ContextVar("tunetrace_station", default=None)
"""The station whose task is running; tasks created inside inherit it."""

_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
}


@contextmanager
def station_scope(name: str) -> Iterator[None]:
    """Every record logged in this block (and in tasks created in it) names ``name``."""
    token = station_context.set(name)
    try:
        yield
    finally:
        station_context.reset(token)


def stderr_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """systemd's documented test: ``JOURNAL_STREAM`` equals the stream's ``device:inode``."""
    expected = environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


class StationFilter(logging.Filter):
    """Sets ``record.station`` from ``station_scope`` unless the call passed ``extra={"station": ...}``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "station", None) is None:
            record.station = station_context.get()
        return True


def _priority(record: logging.LogRecord) -> str:
    level = max((lv for lv in _JOURNAL_PRIORITY if lv <= record.levelno), default=logging.DEBUG)
    return f"<{_JOURNAL_PRIORITY[level]}>"


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: [station] message``; under journald ``<p>LEVEL logger: [station] message``."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s" if journal
                         else "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        station = getattr(record, "station", None)
        text = redact(super().format(_with_station(record, station)))
        if not self._journal:
            return text
        # journald splits on newlines: a traceback keeps its priority on every line.
        prefix = _priority(record)
        return "\n".join(prefix + line for line in text.split("\n"))


def _with_station(record: logging.LogRecord, station: str | None) -> logging.LogRecord:
    if not station:
        return record
    copy = logging.makeLogRecord(record.__dict__)
    copy.msg = f"[{station}] {record.getMessage()}"
    copy.args = None
    return copy


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``journal`` adds the priority prefix (journald strips it)."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "station": getattr(record, "station", None),
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        line = json.dumps(entry, ensure_ascii=False)
        return _priority(record) + line if self._journal else line




def redact(text: str) -> str:
    """Credentials in URLs never reach a log line, whoever logged them (``user:pw@`` and token-like
    query parameters -> ``***``): the last line of defence behind ``tunetrace.redact``'s callers."""
    return redact_text(text)


def configure_logging(
    level: str, log_format: LogFormat = "text", *, stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Route every logger to ``stream`` (stderr) in the chosen format; replaces earlier handlers."""
    stream = stream or sys.stderr
    journal = stderr_is_journal(stream, os.environ if environ is None else environ)
    handler = logging.StreamHandler(stream)
    handler.addFilter(StationFilter())
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler.setFormatter(formatter(journal=journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
