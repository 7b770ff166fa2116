"""``tunetrace report``: plays, airtime and monitored hours from the play history.

    tunetrace report [--config FILE] [--from DATE] [--to DATE] [--station NAME]...
                     [--by track|day|month] [--format table|csv|json]

Dates are UTC, ``YYYY-MM-DD`` or ISO 8601 date-times; a bare ``--to`` date includes that whole day,
so ``--from 2026-03-01 --to 2026-03-31`` is March.  It reads the history named by the config
(``history.url``; SQLite in the data dir by default), so one report covers every daemon that
writes a shared PostgreSQL history.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

from tunetrace.cli.common import EXIT_OK, EXIT_USAGE, Subparsers, add_config_option, load
from tunetrace.errors import HistoryError

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def add_report_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    from tunetrace.history.report import Format, GroupBy

    parser = subparsers.add_parser(
        "report", help="plays, airtime and monitored hours per station and track, from the history",
        description="Plays, airtime and monitored hours per station and track (or per day/month) from "
                    "the play history. Dates are UTC; a bare --to date includes that day.",
    )
    add_config_option(parser)
    parser.add_argument("--from", dest="start", metavar="DATE", default=None,
                        help="first day (or date-time) included; default: the history's beginning")
    parser.add_argument("--to", dest="end", metavar="DATE", default=None,
                        help="last day included (a date-time: excluded from there); default: now")
    parser.add_argument("--station", action="append", default=[], metavar="NAME",
                        help="only this station (repeat for several); default: all in the history")
    parser.add_argument("--by", choices=get_args(GroupBy), default="track",
                        help="one row per track over the range, or per track and day/month")
    parser.add_argument("--format", choices=get_args(Format), default="table", dest="fmt",
                        help="table (terminal), csv or json")
    parser.set_defaults(func=_cmd_report)


def parse_when(text: str, *, end: bool) -> datetime:
    """``YYYY-MM-DD`` (an end date includes its whole day) or an ISO 8601 date-time (UTC if naive)."""
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        at = datetime.fromisoformat(text)
    except ValueError:
        option = "--to" if end else "--from"
        raise ValueError(f"{option} {text!r}: not a date; write YYYY-MM-DD or 2026-03-01T12:00:00") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _cmd_report(args: argparse.Namespace) -> int:
    from tunetrace.history import open_history
    from tunetrace.history.report import build_report, render

    now = datetime.now(UTC)
    try:
        start = parse_when(args.start, end=False) if args.start else EARLIEST
        end = parse_when(args.end, end=True) if args.end else now
    except ValueError as exc:
        print(f"usage error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if end <= start:
        print(f"usage error: --to ({end.isoformat()}) must be after --from ({start.isoformat()})",
              file=sys.stderr)
        return EXIT_USAGE
    config = load(args)
    url = config.history_url()
    if url.startswith("sqlite:///") and not Path("/" + url.removeprefix("sqlite:///").lstrip("/")).exists():
        raise HistoryError(
            f"no play history at {url.removeprefix('sqlite://')}: no daemon has run with this config "
            "yet; pass the daemon's --config (or set history.url)"
        )
    store = open_history(url)  # HistoryError -> exit 69 in cli.main
    try:
        stations = tuple(args.station)
        plays = store.plays(start, end, stations)
        intervals = store.intervals(start, end, stations)
    finally:
        store.close()
    sys.stdout.write(render(build_report(plays, intervals, start, end, args.by, now), args.fmt))
    return EXIT_OK
