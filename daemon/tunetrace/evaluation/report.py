"""Turn an evaluation's answers into ``results.csv`` (one row per query) and ``report.md``.

Rates are per (condition, length) cell with the number of queries beside them, because a rate
from 20 queries moves in steps of 5 points.  The headline uses the matcher's configured
``min_confidence``, fixed before the run; the threshold table below it is recomputed from the
recorded best candidates for information only (retuning on it would be tuning on the test set).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunetrace.evaluation.run import EvalRun, QueryResult

OFFSET_TOLERANCE_S = 0.5
"""A right-track answer is a hit when its offset is within this of the truth."""
SWEEP_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)
TARGET_FALSE_POSITIVE_RATE = 0.005

CSV_COLUMNS = (
    "query_id", "set", "condition", "length_s", "source_file", "truth_track_id", "truth_offset_s",
    "answer_track_id", "answer_title", "answer_offset_s", "confidence", "aligned_windows", "speed_ratio",
    "right_track", "right_offset", "offset_error_s", "best_track_id", "best_offset_s",
    "best_aligned_windows", "latency_s", "verified",
)


def is_hit(result: QueryResult) -> bool:
    error = result.offset_error_s
    return error is not None and abs(error) <= OFFSET_TOLERANCE_S


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def write_csv(results: Sequence[QueryResult], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow([
                r.query_id, "catalog" if r.in_catalog else "holdout", r.condition, f"{r.length_s:g}",
                r.source_file, _id(r.truth_track_id), _fmt(r.truth_offset_s), _id(r.answer_track_id),
                r.answer_title, _fmt(r.answer_offset_s), _fmt(r.confidence, 4), r.aligned_windows,
                f"{r.speed_ratio:g}", int(r.right_track), int(is_hit(r)), _fmt(r.offset_error_s),
                _id(r.best_track_id), _fmt(r.best_offset_s), r.best_aligned_windows, _fmt(r.latency_s, 4),
                int(r.verified),
            ])


def _verification_line(run: EvalRun) -> list[str]:
    if run.verified_min_confidence is None:
        return []
    m = run.matcher
    verified = sum(1 for r in run.results if r.verified)
    return [
        f"- verification: {verified} of {len(run.results)} queries verified (verify_queries "
        f"`{m.verify_queries}`, {m.verify_candidates} candidates each), their answers judged by "
        f"min_confidence **{run.verified_min_confidence}**"
    ]


# -- metrics ------------------------------------------------------------------------------------


def rate(results: Sequence[QueryResult], predicate: Callable[[QueryResult], bool]) -> float | None:
    return sum(1 for r in results if predicate(r)) / len(results) if results else None


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


@dataclass(frozen=True)
class SweepRow:
    threshold: float
    hit_rate: float | None
    track_rate: float | None
    wrong_track_rate: float | None
    false_positive_rate: float | None


def _wrong_track(result: QueryResult) -> bool:
    return result.answer_track_id is not None and not result.right_track


def _answer_at(result: QueryResult, threshold: float, min_aligned_windows: int) -> int | None:
    """The track the recogniser would have answered had ``min_confidence`` been ``threshold``."""
    if result.best_track_id is None or result.confidence < threshold:
        return None
    return result.best_track_id if result.best_aligned_windows >= min_aligned_windows else None


def sweep(
    results: Sequence[QueryResult], thresholds: Sequence[float], min_aligned_windows: int
) -> list[SweepRow]:
    """Hit and false-positive rates had the threshold been each of ``thresholds``."""
    catalog = [r for r in results if r.in_catalog]
    holdout = [r for r in results if not r.in_catalog]
    rows = []
    for t in thresholds:

        def right(r: QueryResult, t: float = t) -> bool:
            return r.truth_track_id is not None and _answer_at(r, t, min_aligned_windows) == r.truth_track_id

        def hit(r: QueryResult, t: float = t) -> bool:
            return (right(r, t) and r.best_offset_s is not None and r.truth_offset_s is not None
                    and abs(r.best_offset_s - r.truth_offset_s) <= OFFSET_TOLERANCE_S)

        def answered(r: QueryResult, t: float = t) -> bool:
            return _answer_at(r, t, min_aligned_windows) is not None

        def wrong(r: QueryResult, t: float = t) -> bool:
            return answered(r, t) and not right(r, t)

        rows.append(SweepRow(
            t, rate(catalog, hit), rate(catalog, right), rate(catalog, wrong), rate(holdout, answered),
        ))
    return rows


def calibrated_threshold(
    results: Sequence[QueryResult], target_rate: float, min_aligned_windows: int
) -> float | None:
    """The lowest ``min_confidence`` (on a 0.01 grid) keeping the hold-out FP rate at ``target_rate``.

    For a calibration run only: applied to the run it came from, it would be tuned on its test set.
    """
    holdout = [r for r in results if not r.in_catalog]
    if not holdout:
        return None
    allowed = int(target_rate * len(holdout))
    eligible = sorted(
        (r.confidence for r in holdout if r.best_track_id is not None
         and r.best_aligned_windows >= min_aligned_windows),
        reverse=True,
    )
    if len(eligible) <= allowed:
        return 0.0
    return float(np.floor(eligible[allowed] * 100) / 100 + 0.01)


# -- Markdown -----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _grid(
    results: Sequence[QueryResult], conditions: Sequence[str], lengths: Sequence[float],
    predicate: Callable[[QueryResult], bool],
) -> list[str]:
    """Rate per condition (rows) and length (columns), plus an "all lengths" column and row."""
    def cell(rs: Sequence[QueryResult]) -> str:
        return f"{_pct(rate(rs, predicate))} ({len(rs)})" if rs else "–"

    rows = []
    for c in [*conditions, None]:
        in_row = [r for r in results if c is None or r.condition == c]
        rows.append([
            "**all**" if c is None else c,
            *(cell([r for r in in_row if r.length_s == length]) for length in lengths),
            cell(in_row),
        ])
    return _table(["condition", *(f"{length:g} s" for length in lengths), "all"], rows)


def _offset_rows(results: Sequence[QueryResult], conditions: Sequence[str]) -> list[list[str]]:
    rows = []
    for c in [*conditions, None]:
        errors = [abs(e) for r in results if c is None or r.condition == c
                  if (e := r.offset_error_s) is not None]
        rows.append([
            "**all**" if c is None else c, str(len(errors)),
            _fmt(percentile(errors, 50), 2), _fmt(percentile(errors, 95), 2),
        ])
    return rows


def _latency_rows(results: Sequence[QueryResult], lengths: Sequence[float]) -> list[list[str]]:
    rows = []
    for length in [*lengths, None]:
        times = [r.latency_s * 1000 for r in results if length is None or r.length_s == length]
        rows.append([
            "**all**" if length is None else f"{length:g} s", str(len(times)),
            _fmt(percentile(times, 50), 0), _fmt(percentile(times, 95), 0),
        ])
    return rows


def render_markdown(run: EvalRun) -> str:
    results = run.results
    options = run.options
    conditions = [c.name for c in options.conditions]
    lengths = list(options.lengths_s)
    catalog = [r for r in results if r.in_catalog]
    holdout = [r for r in results if not r.in_catalog]
    m = run.matcher
    lines = [
        "# tunetrace evaluation report", "",
        f"- encoder: `{run.encoder_id}` at {run.sample_rate} Hz; catalog `{run.catalog_uri}` "
        f"({run.catalog_tracks} tracks from `{options.catalog_dir}`, {run.catalog_hours:.2f} h in the store)",
        f"- hold-out: {run.holdout_tracks} tracks from `{options.holdout_dir}` (not in the catalog)",
        f"- queries: {options.per_cell} per {'track and ' if options.per_track else ''}"
        f"(set, condition, length); seed {options.seed}; "
        f"{len(catalog)} catalog + {len(holdout)} hold-out excerpts",
        f"- matcher (fixed before the run, not tuned on it): min_confidence **{m.min_confidence}**"
        f"{' (`min_confidence_large`: the catalog is large)' if run.threshold_from_size else ''}, "
        f"min_aligned_windows {m.min_aligned_windows}, top_k {m.top_k}, offset_tolerance_s "
        f"{m.offset_tolerance_s}, query_hop_s {m.query_hop_s or 'default (catalog hop / 4)'}, "
        f"speed_ratios {list(m.speed_ratios)}",
        *_verification_line(run),
        f"- ingest: {run.ingest.added} added, {run.ingest.count('skipped')} already present, "
        f"{len(run.ingest.failures)} failed; {run.ingest.audio_s:.0f} s of audio in "
        f"{run.ingest.wall_s:.1f} s",
        f"- machine: {run.machine.get('platform', '?')}, {run.machine.get('cpus', '?')} CPUs, "
        f"load average at start {run.machine.get('load_average_at_start', '?')}; run took {run.wall_s:.0f} s",
        "",
        f"A **hit** is the right track with its offset within {OFFSET_TOLERANCE_S} s of the truth. "
        "Cells read `rate (queries)`.", "",
    ]
    if run.excluded:
        lines += ["Left out:", "", *(f"- {reason}" for reason in run.excluded), ""]
    lines += ["## Hit rate (right track and offset), catalog excerpts", ""]
    lines += _grid(catalog, conditions, lengths, is_hit)
    lines += ["## Right track (any offset), catalog excerpts", ""]
    lines += _grid(catalog, conditions, lengths, lambda r: r.right_track)
    lines += ["## Wrong track, catalog excerpts", "", "A catalog excerpt answered with another track.", ""]
    lines += _grid(catalog, conditions, lengths, _wrong_track)
    lines += ["## False positives, hold-out excerpts", "",
              "A hold-out excerpt (not in the catalog) answered with any catalog track.", ""]
    lines += _grid(holdout, conditions, lengths, lambda r: r.answer_track_id is not None)
    lines += ["## Offset accuracy", "", "Absolute offset error of right-track answers, seconds.", ""]
    lines += _table(["condition", "answers", "median", "p95"], _offset_rows(catalog, conditions))
    lines += ["## Latency", "", f"Identify time per excerpt, warm ({len(results)} queries after "
              "warm-up; decoding and degrading excluded), milliseconds.", ""]
    lines += _table(["length", "queries", "median", "p95"], _latency_rows(results, lengths))
    rows = sweep(results, sorted({*SWEEP_THRESHOLDS, m.min_confidence}), m.min_aligned_windows)
    lines += [
        "## Threshold trade-off (for information)", "",
        "Recomputed from each query's strongest candidate as if `min_confidence` had been each value; "
        "all conditions and lengths pooled. The headline above uses the configured value.",
        *([] if run.verified_min_confidence is None else [
            "Verified and unverified answers are swept alike here, although the headline judged them "
            "by different thresholds, and which queries are verified depends on the threshold itself: "
            "read the sweep as a rough guide only."]),
        "",
    ]
    lines += _table(
        ["min_confidence", "hit", "right track", "wrong track", "hold-out FP"],
        [[f"{row.threshold:g}" + (" (configured)" if row.threshold == m.min_confidence else ""),
          _pct(row.hit_rate), _pct(row.track_rate), _pct(row.wrong_track_rate),
          _pct(row.false_positive_rate)] for row in rows],
    )
    calibrated = calibrated_threshold(results, TARGET_FALSE_POSITIVE_RATE, m.min_aligned_windows)
    if calibrated is not None:
        lines += [
            f"Lowest `{'min_confidence_large' if run.threshold_from_size else 'min_confidence'}` that "
            "would have kept hold-out false positives at or below "
            f"{100 * TARGET_FALSE_POSITIVE_RATE:g}% on this run's {len(holdout)} hold-out excerpts: "
            f"**{calibrated:.2f}**. Use it only from a separate calibration run (another seed, other "
            "hold-out music), never on the run it was measured on.", "",
        ]
    return "\n".join(lines)


def write_report(run: EvalRun, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "results.csv", out_dir / "report.md"
    write_csv(run.results, csv_path)
    md_path.write_text(render_markdown(run), encoding="utf-8")
    return md_path, csv_path
