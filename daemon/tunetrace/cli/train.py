"""``tunetrace train {prepare,fit,export,quickeval,bench}``: argparse wiring for the training recipe.

torch is imported only by the sub-commands that need it, inside ``run_train``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from tunetrace.errors import TunetraceError
from tunetrace.train.config import SourceConfig, TrainConfig, load_train_config

if TYPE_CHECKING:
    from tunetrace.train.data import SourceSpec

SAMPLE_RATE = 8000
DEFAULT_CONFIG = Path("config/train.yaml")


def _parse_codec(text: str) -> tuple[str, int]:
    codec, _, rate = text.partition(":")
    return codec, int(rate or "64")


def add_train_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``train`` and its actions on the main CLI's sub-parsers."""
    parser = subparsers.add_parser("train", help="train the neural fingerprint (needs the train extra)")
    configure_parser(parser)
    parser.set_defaults(func=run_train)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help=f"training YAML (default {DEFAULT_CONFIG})")
    actions = parser.add_subparsers(dest="train_action")
    prepare = actions.add_parser("prepare", help="decode the corpora into the 8 kHz .npy cache")
    prepare.add_argument(
        "--codecs", action="store_true", help="also precompute lossy-codec copies and data.variants"
    )
    prepare.add_argument("--no-sources", action="store_true", help="skip decoding (only codecs)")
    prepare.add_argument(
        "--sources", default=None, help="comma-separated source names to prepare (default: all of them)"
    )
    fit = actions.add_parser(
        "fit", help="train; resumes from <run_dir>/checkpoint.pt if present; SIGTERM checkpoints and stops"
    )
    fit.add_argument("--steps", type=int, default=None, help="override optim.steps")
    fit.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    export = actions.add_parser("export", help="export the checkpoint to ONNX plus JSON sidecar")
    export.add_argument("--checkpoint", type=Path, default=None)
    export.add_argument("--out", type=Path, required=True)
    quick = actions.add_parser("quickeval", help="retrieval hit rates on the validation catalog")
    quick.add_argument("--model", type=Path, default=None, help="ONNX file (default: shipped model)")
    quick.add_argument("--encoder", default="fingerprint", choices=["fingerprint", "spectral"])
    quick.add_argument("--queries", type=int, default=100, help="snippets per condition")
    quick.add_argument("--snippet-s", type=float, default=5.0)
    quick.add_argument("--conditions", default=None, help="comma-separated subset")
    bench = actions.add_parser("bench", help="encoder throughput in windows/s (front end included)")
    bench.add_argument("--model", type=Path, default=None, help="ONNX file (default: shipped model)")
    bench.add_argument("--encoder", default="fingerprint", choices=["fingerprint", "spectral"])
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--batch", type=int, default=64)


def _resolve_config(args: argparse.Namespace) -> TrainConfig:
    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return load_train_config(path)


def _source_spec(source: SourceConfig, package_cache: Path) -> SourceSpec:
    """Where ``source`` lives on this machine, unpacking its Debian package first if it names one."""
    from tunetrace.evaluation.packages import unpack
    from tunetrace.train.data import SourceSpec

    root = unpack(source.package, package_cache) / source.path if source.package else source.path
    return SourceSpec(source.name, root, source.include, source.min_duration_s, source.exclude)


def _chosen_sources(config: TrainConfig, names: str | None) -> list[SourceConfig]:
    data = config.data
    every = [*data.train_sources, *data.val_sources, *data.holdout_sources, *data.speech_sources]
    if names is None:
        return every
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {s.name for s in every})
    if unknown:
        known = ", ".join(s.name for s in every)
        raise TunetraceError(f"--sources: unknown source(s) {', '.join(unknown)}; the config has {known}")
    return [s for s in every if s.name in wanted]


def _prepare(config: TrainConfig, args: argparse.Namespace) -> int:
    from tunetrace.train.data import (
        VARIANTS,
        CodecSpec,
        cached_samples,
        prepare_codec_copies,
        prepare_source,
        prepare_variant_copies,
    )

    cache = config.data.cache_dir
    train_tracks: list[Path] = []
    try:
        chosen = _chosen_sources(config, args.sources)
        for source in chosen:
            if args.no_sources:
                found = (cache / source.name).glob("*.npy")
                tracks = sorted(p for p in found if not p.name.endswith(".tmp.npy"))
            else:
                spec = _source_spec(source, config.data.package_cache_dir)
                tracks = prepare_source(spec, cache, SAMPLE_RATE)
            if source in config.data.train_sources:
                train_tracks.extend(tracks)
            hours = sum(cached_samples(t) for t in tracks) / SAMPLE_RATE / 3600
            logging.info("%s: %d tracks cached, %.2f h", source.name, len(tracks), hours)
    except TunetraceError as exc:
        logging.error("%s", exc)
        return 1
    if args.codecs:
        for text in config.data.codecs:
            codec, rate = _parse_codec(text)
            prepare_codec_copies(train_tracks, cache, SAMPLE_RATE, CodecSpec(codec, rate))
        for name in config.data.variants:
            prepare_variant_copies(train_tracks, cache, SAMPLE_RATE, VARIANTS[name])
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Entry point for ``tunetrace train``; returns the process exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = _resolve_config(args)
    action = getattr(args, "train_action", None)
    if action == "prepare":
        return _prepare(config, args)
    if action == "fit":
        from tunetrace.train.loop import fit

        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        fit(config, steps=args.steps, fresh=args.fresh, should_stop=stop.is_set)
        return 0
    if action == "export":
        from tunetrace.train.export import export_checkpoint

        export_checkpoint(config, args.checkpoint or config.run_dir / "checkpoint.pt", args.out)
        return 0
    if action == "quickeval":
        from tunetrace.train.quickeval import run_quickeval

        return run_quickeval(config, args)
    if action == "bench":
        from tunetrace.train.quickeval import run_benchmark

        return run_benchmark(args)
    logging.error("choose an action: prepare, fit, export, quickeval or bench")
    return 2
