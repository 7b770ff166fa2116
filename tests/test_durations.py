"""Durations as printed in progress lines, play reports and overlap listings."""

from __future__ import annotations

import pytest

from tunetrace.durations import hours_minutes_seconds, minutes_seconds


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0:00:00"), (59.6, "0:01:00"), (3723.0, "1:02:03"), (90_000.0, "25:00:00"),
])
def test_hours_minutes_seconds_rounds_and_never_wraps_at_a_day(seconds: float, text: str) -> None:
    assert hours_minutes_seconds(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0:00"), (187.0, "3:07"), (3600.0, "60:00")])
def test_minutes_seconds_counts_minutes_past_the_hour(seconds: float, text: str) -> None:
    assert minutes_seconds(seconds) == text
