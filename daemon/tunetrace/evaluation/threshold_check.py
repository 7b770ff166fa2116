"""Recompute hit and false-positive rates at other thresholds from two ``results.csv`` files.

Used for docs/evaluation.md: calibrate ``min_confidence`` on the calibration run (seed 2, nexuiz
hold-out) and check it out of sample on the reported run (seed 1, wesnoth hold-out).  Run from the
repository root:  python -m tunetrace.evaluation.threshold_check [RUN_DIR]   (default docs/eval/spectral)
Models compared each at its own calibrated threshold, per condition (docs/models.md):
python -m tunetrace.evaluation.threshold_check --by-condition RUN_DIR...
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

DEFAULT_RUN_DIR = Path("docs/eval/spectral")
TARGET_FP = 0.005
LENGTHS = ("3", "5", "10")


def load(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def answered(row: dict[str, str], threshold: float, min_windows: int) -> bool:
    return bool(row["best_track_id"]) and float(row["confidence"]) >= threshold and int(
        row["best_aligned_windows"]
    ) >= min_windows


def right_track(row: dict[str, str], threshold: float, min_windows: int) -> bool:
    return answered(row, threshold, min_windows) and row["best_track_id"] == row["truth_track_id"]


def hit(row: dict[str, str], threshold: float, min_windows: int) -> bool:
    """The right track at an offset within 0.5 s of the truth (the report's hit)."""
    return right_track(row, threshold, min_windows) and abs(
        float(row["best_offset_s"]) - float(row["truth_offset_s"])) <= 0.5


def rates(rows: list[dict[str, str]], threshold: float, min_windows: int, length: str | None = None) -> str:
    cat = [r for r in rows if r["set"] == "catalog" and length in (None, r["length_s"])]
    hold = [r for r in rows if r["set"] == "holdout" and length in (None, r["length_s"])]
    right = [r for r in cat if right_track(r, threshold, min_windows)]
    hits = [r for r in right if hit(r, threshold, min_windows)]
    wrong = sum(1 for r in cat if answered(r, threshold, min_windows)) - len(right)
    fps = sum(1 for r in hold if answered(r, threshold, min_windows))
    return (f"hit {100 * len(hits) / len(cat):.1f}%, right track {100 * len(right) / len(cat):.1f}%, "
            f"wrong track {100 * wrong / len(cat):.1f}%, hold-out FP {fps}/{len(hold)} "
            f"({100 * fps / len(hold):.2f}%)")


def calibrate(rows: list[dict[str, str]], min_windows: int, length: str | None = None) -> float:
    hold = [r for r in rows if r["set"] == "holdout" and length in (None, r["length_s"])]
    allowed = int(TARGET_FP * len(hold))
    scores = sorted((float(r["confidence"]) for r in hold if answered(r, 0.0, min_windows)), reverse=True)
    return 0.0 if len(scores) <= allowed else math.floor(scores[allowed] * 100) / 100 + 0.01


def hit_rates_by_condition(
    calibration: list[dict[str, str]], reported: list[dict[str, str]], min_windows: int = 3,
) -> tuple[float, dict[tuple[str, str], float], int, int]:
    """The threshold calibrated on ``calibration`` and, at it, the reported run's hit rate per
    (condition, length) and hold-out false positives (count, queries): how two models are compared
    each at its own threshold (docs/models.md)."""
    threshold = calibrate(calibration, min_windows)
    cells: dict[tuple[str, str], list[int]] = {}
    for row in reported:
        if row["set"] != "catalog":
            continue
        cell = cells.setdefault((row["condition"], row["length_s"]), [0, 0])
        cell[1] += 1
        cell[0] += hit(row, threshold, min_windows)
    holdout = [r for r in reported if r["set"] == "holdout"]
    false_positives = sum(answered(r, threshold, min_windows) for r in holdout)
    return threshold, {key: hits / n for key, (hits, n) in cells.items()}, false_positives, len(holdout)


def print_by_condition(run_dirs: list[Path]) -> None:
    """A markdown table: each run dir (``calibration/results.csv`` and ``report/results.csv``) at
    its own calibrated threshold, every condition at 3 / 5 / 10 s, and the means."""
    runs = [
        hit_rates_by_condition(load(d / "calibration" / "results.csv"), load(d / "report" / "results.csv"))
        for d in run_dirs
    ]
    conditions = list(dict.fromkeys(condition for _, rates_, _, _ in runs for condition, _ in rates_))
    print("| condition | " + " | ".join(f"{d.name} ({t:.2f}) 3 / 5 / 10 s" for d, (t, *_) in zip(
        run_dirs, runs, strict=True)) + " |")
    print("|---|" + "---|" * len(runs))
    for condition in conditions:
        print(f"| {condition} | " + " | ".join(
            " / ".join(f"{100 * rates_[(condition, length)]:.0f}" for length in LENGTHS)
            for _, rates_, _, _ in runs) + " |")
    print("| **mean** | " + " | ".join(
        " / ".join(f"{100 * sum(rates_[(c, length)] for c in conditions) / len(conditions):.1f}"
                   for length in LENGTHS) for _, rates_, _, _ in runs) + " |")
    print("| hold-out false positives | " + " | ".join(
        f"{fp} of {n} ({100 * fp / n:.2f} %)" for _, _, fp, n in runs) + " |")


def main(run_dir: Path = DEFAULT_RUN_DIR) -> None:
    calibration = load(run_dir / "calibration" / "results.csv")
    reported = load(run_dir / "results.csv")
    pooled = calibrate(calibration, 3)
    print(f"calibrated min_confidence (FP <= {100 * TARGET_FP:g}%, all lengths pooled): {pooled:.2f}")
    for length in LENGTHS:
        print(f"  calibrated for {length} s excerpts alone: {calibrate(calibration, 3, length):.2f}")
    for name, rows in (("calibration run", calibration), ("reported run", reported)):
        for threshold in (0.25, pooled):
            print(f"{name}, min_confidence {threshold:.2f}: {rates(rows, threshold, 3)}")
            for length in LENGTHS:
                print(f"    {length:>2} s: {rates(rows, threshold, 3, length)}")
    for min_windows in (3, 4, 5):
        for threshold in (0.25, 0.42):
            print(f"reported run, min_aligned_windows {min_windows}, min_confidence {threshold:.2f}: "
                  f"{rates(reported, threshold, min_windows)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--by-condition"]:
        print_by_condition([Path(arg) for arg in sys.argv[2:]])
    else:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RUN_DIR)
