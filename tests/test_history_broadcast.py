"""A simulated broadcast through the real pipeline into the real history, interrupted by a daemon
restart, a stream outage inside a run and a crash (each losing 5 s of audio): the history holds each
true airing once, with its end reason, and the report's plays and airtime per track match the
schedule within 2 s per play.

CI runs a short schedule on the three-clip catalog; the one-hour run on the warzone catalog is
``python -m tunetrace.evaluation.broadcast --minutes 60`` (figures in docs/history.md).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.fixtures.audio import Clip
from tests.fixtures.milvus import BuiltCatalog, private_catalog_copy
from tunetrace.evaluation.broadcast import airing_errors, compare, monitored_s, simulate
from tunetrace.evaluation.live import EPOCH
from tunetrace.history import open_history
from tunetrace.pipeline import open_model

pytestmark = pytest.mark.slow

AIRTIME_TOLERANCE_PER_PLAY_S = 2.0


def test_a_broadcast_with_a_restart_an_outage_and_a_crash_keeps_each_airing_once(
    clip_catalog: BuiltCatalog, holdout_clips: list[Clip], tmp_path: Path,
) -> None:
    data = private_catalog_copy(clip_catalog, tmp_path / "data")
    # Evidence is lost after 4 s: shorter than the 5 s outage, so only the outage rule (the ring
    # marks the gap, the tracker holds the play over it) keeps that airing one play.
    tracker = clip_catalog.config.tracker.model_copy(update={"end_after_s": 4.0})
    config = clip_catalog.config.model_copy(update={"data_dir": data, "tracker": tracker})
    model, store = open_model(config)
    catalog = [(t.track_id, Path(t.source_path), t.duration_s) for t in store.tracks()]
    try:
        run = simulate(config, model, catalog, [c.path for c in holdout_clips], 6.0, 3, tmp_path)
    finally:
        store.close()

    ended = [e.play for e in run.events if e.kind == "play_ended"]
    assert {p.end_reason for p in ended} >= {"shutdown", "crash_recovered"}, "both interruptions recorded"
    resumed = [e.play for e in run.events if e.kind == "play_started" and e.play.resumed_at is not None]
    assert len(resumed) == 2, "the airing interrupted by the restart and by the crash each continued"

    history = open_history(config.history_url())
    plays = history.plays(EPOCH - timedelta(days=1), EPOCH + timedelta(days=1))
    history.close()
    assert len({p.play_id for p in plays}) == len(plays)
    assert all(p.end_reason is not None for p in plays)
    assert plays[-1].end_reason in ("shutdown", "evidence_lost")

    checks = compare(run.segments, config, "broadcast")
    details = [c.__dict__ for c in checks]
    assert all(c.plays == c.true_plays for c in checks), details
    for check in checks:
        assert check.airtime_error_s <= AIRTIME_TOLERANCE_PER_PLAY_S * check.true_plays, details
    errors = airing_errors(run.segments, config, "broadcast")
    assert max(errors) <= AIRTIME_TOLERANCE_PER_PLAY_S, errors
    # The outage airing is one play that was never interrupted: no end, no resumption.
    outage = next(c for c in run.cuts if c.ending == "outage")
    outage_plays = [p for p in plays if (p.started_at - EPOCH).total_seconds() < outage.at_s
                    and p.ended_at is not None and (p.ended_at - EPOCH).total_seconds() > outage.at_s]
    assert len(outage_plays) == 1 and outage_plays[0].resumed_at is None, outage_plays
    # Monitored time: everything but the three 5 s gaps, less at most one checkpoint lost at the
    # crash; the outage is down time, give or take a window at each of its ends.
    up_s, down_s = monitored_s(config, "broadcast")
    truth_s = run.duration_s - sum(c.gap_s for c in run.cuts)
    window_s = model.encoder.info.window_s
    assert truth_s - config.history.checkpoint_interval_s - 2 * window_s <= up_s <= truth_s + window_s
    assert outage.gap_s - window_s <= down_s <= outage.gap_s + 2 * window_s
