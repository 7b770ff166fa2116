"""``tunetrace models fetch NAME``: download encoder weights (the logic is ``encoders.weights``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunetrace.cli.common import EXIT_OK, EXIT_PARTIAL, EXIT_UNAVAILABLE, Subparsers
from tunetrace.config import load_config
from tunetrace.encoders.weights import (
    MODELS,
    UrllibDownloader,
    default_model_dir,
    fetch_model,
    manual_install_hint,
)
from tunetrace.errors import DownloadError, ModelError


def add_models_parser(
    subparsers: Subparsers[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``models fetch NAME`` on the CLI's subparsers; ``args.func`` is ``run_models``."""
    models = subparsers.add_parser("models", help="download encoder weights")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch = actions.add_parser(
        "fetch", help="download a model's weights (checksum-verified, atomic)",
        description="Download a model's weights into encoder.model_path (when the configured "
        "encoder is NAME), else <data_dir>/models/NAME. Offline, the error names each file's "
        "URL and where to place it.",
    )
    fetch.add_argument("name", choices=sorted(MODELS), metavar="NAME", help="model: vggish")
    fetch.add_argument(
        "--config", "-c", type=Path, default=None,
        help="YAML config whose data_dir / encoder.model_path pick the destination "
        "(default: $TUNETRACE_CONFIG, else /etc/tunetrace/tunetrace.yaml, else built-in defaults)",
    )
    fetch.add_argument("--dest", type=Path, default=None, help="write into this directory instead")
    fetch.add_argument("--base-url", default=None, help="download from this mirror instead")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    models.set_defaults(func=run_models)
    return models




def destination(args: argparse.Namespace) -> Path:
    """``--dest``, else the configured ``encoder.model_path`` for this model, else the default.

    The config is read so that fetch writes exactly where the encoder will look.
    """
    if args.dest is not None:
        return Path(args.dest)
    config = load_config(getattr(args, "config", None))
    if config.encoder.name == args.name and config.encoder.model_path is not None:
        return config.encoder.model_path
    return default_model_dir(args.name, config.data_dir)


def run_models(args: argparse.Namespace) -> int:
    """Run ``models fetch``: prints the paths written; non-zero with instructions on failure.

    Exit status: 0 done, 69 download failed (offline, HTTP error), 1 checksum mismatch or
    unknown model.  A bad config raises ``ConfigError`` for the CLI to report.
    """
    dest = destination(args)
    try:
        paths = fetch_model(
            args.name, dest, base_url=args.base_url,
            downloader=UrllibDownloader(progress=not args.no_progress),
        )
    except DownloadError as exc:
        print(f"tunetrace models fetch: {exc}", file=sys.stderr)
        print(manual_install_hint(args.name, dest, args.base_url), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ModelError as exc:
        print(f"tunetrace models fetch: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    for path in paths:
        print(path)
    return EXIT_OK
