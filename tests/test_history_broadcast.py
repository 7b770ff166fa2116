"""A simulated broadcast through the real pipeline into the real history, interrupted by a daemon
restart and a crash (each losing 5 s of audio): the history holds each true airing once, with its
end reason, and the report's plays and airtime per track match the schedule within 2 s per play.

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


def test_a_broadcast_with_a_restart_and_a_crash_keeps_each_airing_once(
    clip_catalog: BuiltCatalog, holdout_clips: list[Clip], tmp_path: Path,
) -> None:
    data = private_catalog_copy(clip_catalog, tmp_path / "data")
    config = clip_catalog.config.model_copy(update={"data_dir": data})
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
    # Monitored time: everything but the two 5 s gaps, less at most one checkpoint lost at the crash.
    up_s, down_s = monitored_s(config, "broadcast")
    truth_s = run.duration_s - sum(c.gap_s for c in run.cuts)
    assert truth_s - config.history.checkpoint_interval_s - 1.0 <= up_s <= truth_s
    assert down_s == 0.0
