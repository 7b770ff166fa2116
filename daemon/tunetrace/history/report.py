"""Reports from the history: plays and airtime per station, track and period; hours monitored.

Pure functions over the history's values (``Play``, ``StationInterval``), so both backends and
every output format share one aggregation and tests check it without a database.

* A play counts in the period (day or month, UTC) in which it **started**, with its whole airtime
  (``ended_at - started_at``; a play still running counts up to ``now``).
* Monitored hours: time a daemon ran the station with its source up; down hours: a daemon ran it
  but the source was down (stream unreachable, sound card lost).  Intervals are clipped to the
  range and split at period boundaries; time no daemon ran the station is in neither.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tunetrace.durations import hours_minutes_seconds
from tunetrace.events import Play
from tunetrace.history.base import StationInterval

GroupBy = Literal["track", "day", "month"]
Format = Literal["table", "csv", "json"]


@dataclass(frozen=True)
class TrackRow:
    station: str
    period: str
    """``YYYY-MM-DD`` (by day), ``YYYY-MM`` (by month) or ``FROM..TO`` (by track: the whole range)."""
    track_id: int
    isrc: str
    """The recording's ISRC (``""``: the catalog has none)."""
    title: str
    artist: str
    album: str
    plays: int
    airtime_s: float
    first_aired: datetime
    last_aired: datetime
    """When the last play of the period ended (or ``now``, if it is still running)."""
    mean_confidence: float


@dataclass(frozen=True)
class StationHours:
    station: str
    period: str
    monitored_s: float
    down_s: float


@dataclass(frozen=True)
class Report:
    start: datetime
    end: datetime
    by: GroupBy
    rows: tuple[TrackRow, ...]
    hours: tuple[StationHours, ...]

    def stations(self) -> list[str]:
        return sorted({h.station for h in self.hours} | {r.station for r in self.rows})

    def periods(self, station: str) -> list[str]:
        return sorted({h.period for h in self.hours if h.station == station}
                      | {r.period for r in self.rows if r.station == station})


def period_of(at: datetime, by: GroupBy, start: datetime, end: datetime) -> str:
    at = at.astimezone(UTC)
    if by == "day":
        return at.strftime("%Y-%m-%d")
    if by == "month":
        return at.strftime("%Y-%m")
    return f"{_day(start)}..{_day(end - timedelta(microseconds=1))}"


def _day(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d")


def _next_boundary(at: datetime, by: GroupBy, end: datetime) -> datetime:
    """The start of the period after the one ``at`` falls in (``end`` by track)."""
    at = at.astimezone(UTC)
    if by == "day":
        return datetime(at.year, at.month, at.day, tzinfo=UTC) + timedelta(days=1)
    if by == "month":
        return datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return end


def build_report(
    plays: Iterable[Play], intervals: Iterable[StationInterval], start: datetime, end: datetime,
    by: GroupBy, now: datetime,
) -> Report:
    """Aggregate ``plays`` (those that started in ``[start, end)``) and ``intervals``."""
    groups: dict[tuple[str, str, int], list[Play]] = {}
    for play in plays:
        if start <= play.started_at < end:
            key = (play.station, period_of(play.started_at, by, start, end), play.track_id)
            groups.setdefault(key, []).append(play)
    rows = [_row(key, members, now) for key, members in groups.items()]
    rows.sort(key=lambda r: (r.station, r.period, -r.airtime_s, r.track_id))
    return Report(start, end, by, tuple(rows), tuple(_hours(intervals, start, end, by)))


def _row(key: tuple[str, str, int], plays: list[Play], now: datetime) -> TrackRow:
    station, period, track_id = key
    ends = [p.ended_at or max(now, p.started_at) for p in plays]
    airtime = sum((e - p.started_at).total_seconds() for p, e in zip(plays, ends, strict=True))
    named = next((p for p in plays if p.title), plays[0])
    return TrackRow(
        station=station, period=period, track_id=track_id,
        isrc=next((p.isrc for p in reversed(plays) if p.isrc), ""), title=named.title, artist=named.artist,
        album=named.album, plays=len(plays), airtime_s=airtime,
        first_aired=min(p.started_at for p in plays), last_aired=max(ends),
        mean_confidence=sum(p.confidence for p in plays) / len(plays),
    )


def _hours(
    intervals: Iterable[StationInterval], start: datetime, end: datetime, by: GroupBy,
) -> list[StationHours]:
    totals: dict[tuple[str, str], list[float]] = {}
    for interval in intervals:
        at, stop = max(interval.started_at, start), min(interval.ended_at, end)
        while at < stop:
            boundary = min(_next_boundary(at, by, end), stop)
            slot = totals.setdefault((interval.station, period_of(at, by, start, end)), [0.0, 0.0])
            slot[0 if interval.source_up else 1] += (boundary - at).total_seconds()
            at = boundary
    return [StationHours(s, p, up, down) for (s, p), (up, down) in sorted(totals.items())]


# -- output ----------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "station", "period", "track_id", "isrc", "title", "artist", "album", "plays", "airtime_s", "first_aired",
    "last_aired", "mean_confidence", "monitored_h", "down_h",
)


def render(report: Report, fmt: Format) -> str:
    if fmt == "csv":
        return to_csv(report)
    if fmt == "json":
        return json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n"
    return to_table(report)


def _hours_of(report: Report, station: str, period: str) -> tuple[float, float]:
    for hours in report.hours:
        if hours.station == station and hours.period == period:
            return hours.monitored_s / 3600, hours.down_s / 3600
    return 0.0, 0.0


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


def to_csv(report: Report) -> str:
    """One row per station, period and track; every row carries its station's hours for the
    period (a station with no play in a period gets one row without a track)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for station in report.stations():
        for period in report.periods(station):
            monitored_h, down_h = _hours_of(report, station, period)
            rows = [r for r in report.rows if r.station == station and r.period == period]
            for row in rows:
                writer.writerow([
                    station, period, row.track_id, row.isrc, row.title, row.artist, row.album, row.plays,
                    f"{row.airtime_s:.1f}", _iso(row.first_aired), _iso(row.last_aired),
                    f"{row.mean_confidence:.3f}", f"{monitored_h:.3f}", f"{down_h:.3f}",
                ])
            if not rows:
                writer.writerow([station, period, "", "", "", "", "", 0, "0.0", "", "", "",
                                 f"{monitored_h:.3f}", f"{down_h:.3f}"])
    return out.getvalue()


def to_json(report: Report) -> dict[str, Any]:
    stations = []
    for station in report.stations():
        periods = []
        for period in report.periods(station):
            monitored_h, down_h = _hours_of(report, station, period)
            periods.append({
                "period": period, "monitored_h": round(monitored_h, 3), "down_h": round(down_h, 3),
                "tracks": [{
                    "track_id": r.track_id, "isrc": r.isrc or None, "title": r.title, "artist": r.artist,
                    "album": r.album,
                    "plays": r.plays, "airtime_s": round(r.airtime_s, 1),
                    "first_aired": _iso(r.first_aired), "last_aired": _iso(r.last_aired),
                    "mean_confidence": round(r.mean_confidence, 3),
                } for r in report.rows if r.station == station and r.period == period],
            })
        stations.append({"station": station, "periods": periods})
    return {"from": _iso(report.start), "to": _iso(report.end), "by": report.by, "stations": stations}


def to_table(report: Report) -> str:
    """Readable on a terminal: a block per station and period, tracks by airtime."""
    lines = [f"tunetrace report {_iso(report.start)} .. {_iso(report.end)} (by {report.by}, UTC)"]
    if not report.stations():
        lines.append("no plays and no monitored time in this range")
    for station in report.stations():
        for period in report.periods(station):
            monitored_h, down_h = _hours_of(report, station, period)
            rows = [r for r in report.rows if r.station == station and r.period == period]
            lines.append("")
            lines.append(f"{station}  {period}  monitored {monitored_h:.2f} h, down {down_h:.2f} h, "
                         f"{sum(r.plays for r in rows)} play(s)")
            table = [("track", "isrc", "title", "artist", "plays", "airtime", "first aired", "last aired",
                      "conf")]
            table.extend((
                str(r.track_id), r.isrc or "-", _clip(r.title), _clip(r.artist), str(r.plays),
                hours_minutes_seconds(r.airtime_s),
                _iso(r.first_aired)[:19].replace("T", " "), _iso(r.last_aired)[:19].replace("T", " "),
                f"{r.mean_confidence:.2f}",
            ) for r in rows)
            lines.extend(_aligned(table))
    return "\n".join(lines) + "\n"


def _clip(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _aligned(table: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    numeric = {0, 4, 5, 8}
    return ["  ".join(
        cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)
    ).rstrip() for row in table]
