"""``tunetrace eval`` argument parsing (the implementation is in ``evaluation.run``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_LENGTHS = "1,3,5,10"
DEFAULT_EXCERPTS = 20
DEFAULT_SEED = 1


def _lengths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths wants seconds like 1,3,5,10, got {text!r}") from None
    if not values or any(not 0.1 <= v <= 120 for v in values):
        raise argparse.ArgumentTypeError("--lengths: each length must be between 0.1 and 120 seconds")
    return values


def _conditions(text: str) -> tuple[Any, ...]:
    from tunetrace.evaluation.conditions import parse_conditions

    try:
        return tuple(parse_conditions(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_eval_parser(sub: Any) -> None:
    from tunetrace.evaluation.conditions import CONDITIONS

    p: argparse.ArgumentParser = sub.add_parser(
        "eval", help="measure recognition quality on degraded excerpts",
        description=(
            "Ingest the catalog folder (files already in the catalog are skipped), cut seeded excerpts "
            "from it and from a hold-out folder of tracks not in the catalog, degrade them, identify "
            "them all and write report.md and results.csv. The catalog lives where the config's "
            "data_dir / milvus.uri says, so a fresh data_dir reproduces a run from scratch."
        ),
    )
    p.add_argument("--config", "-c", type=Path, default=None, help="YAML config (as for every command)")
    p.add_argument("--catalog", type=Path, required=True, help="folder of catalog tracks")
    p.add_argument("--holdout", type=Path, required=True, help="folder of tracks NOT in the catalog")
    p.add_argument("--out", type=Path, default=Path("eval-report"),
                   help="folder for report.md and results.csv (default: ./eval-report)")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--excerpts", type=_positive, default=None, metavar="N",
                       help="queries per (condition, length), for catalog and hold-out each "
                            f"(default {DEFAULT_EXCERPTS})")
    count.add_argument("--excerpts-per-track", type=_positive, default=None, metavar="N",
                       help="instead: N queries from every track per (condition, length)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the query plan (default {DEFAULT_SEED})")
    p.add_argument("--lengths", type=_lengths, default=_lengths(DEFAULT_LENGTHS), metavar="S,S,...",
                   help=f"excerpt lengths in seconds (default {DEFAULT_LENGTHS})")
    p.add_argument("--conditions", type=_conditions, default=None, metavar="NAME,...",
                   help=f"any of {', '.join(CONDITIONS)}, or all (default: all; the speech conditions "
                        "only with --speech)")
    p.add_argument("--speech", type=Path, default=None, metavar="DIR",
                   help="held-out recorded speech for the talk-over conditions (`python -m "
                        "tunetrace.evaluation.packages` unpacks fillets-ng-data-nl and prints its folder)")
    p.add_argument("--encoder", choices=("fingerprint", "spectral", "vggish"), default=None,
                   help="override encoder.name; the catalog then goes to collections named "
                        "<prefix>_<encoder>_* so catalogs of different encoders do not clash")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tunetrace.cli.common import configure_logging
    from tunetrace.config import load_config, with_encoder
    from tunetrace.evaluation.report import write_report
    from tunetrace.evaluation.run import EvalOptions, run_evaluation

    config = load_config(args.config)
    configure_logging(config.log_level)
    if args.encoder is not None and args.encoder != config.encoder.name:
        config = with_encoder(config, args.encoder).model_copy(update={
            "milvus": config.milvus.model_copy(
                update={"collection_prefix": f"{config.milvus.collection_prefix}_{args.encoder}"}
            ),
        })
    for folder in (args.catalog, args.holdout, *([args.speech] if args.speech else [])):
        if not folder.is_dir():
            print(f"error: {folder}: not a folder", file=sys.stderr)
            return 1
    conditions = args.conditions
    if conditions is None:
        conditions = tuple(c for c in _conditions("all") if args.speech is not None or not c.needs_speech)
    options = EvalOptions(
        catalog_dir=args.catalog, holdout_dir=args.holdout, conditions=conditions, speech_dir=args.speech,
        lengths_s=args.lengths, per_cell=args.excerpts_per_track or args.excerpts or DEFAULT_EXCERPTS,
        per_track=args.excerpts_per_track is not None, seed=args.seed, progress=not args.quiet,
    )
    run = run_evaluation(config, options)
    md_path, csv_path = write_report(run, args.out)
    print(f"{len(run.results)} queries in {run.wall_s:.0f} s; wrote {md_path} and {csv_path}")
    return 0
