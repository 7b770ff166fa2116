"""Durations as people read them in progress lines, reports and listings."""

from __future__ import annotations


def hours_minutes_seconds(seconds: float) -> str:
    """``h:mm:ss`` (``1:02:03``): elapsed time, ETAs, airtime; hours are not capped at 24."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def minutes_seconds(seconds: float) -> str:
    """``m:ss`` (``3:07``): a position inside a track."""
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"
