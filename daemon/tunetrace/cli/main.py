"""The ``tunetrace`` command line: one parser, each command in the module of its family.

``cli.catalog`` (ingest, identify, catalog, check-config), ``cli.serve``, ``cli.eval``,
``cli.train``, ``cli.models``; exit codes and shared options live in ``cli.common``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tunetrace import __version__
from tunetrace.cli.catalog import add_catalog_parsers
from tunetrace.cli.common import ERROR_EXITS, Handler, exit_for
from tunetrace.cli.eval import add_eval_parser
from tunetrace.cli.models import add_models_parser
from tunetrace.cli.serve import add_serve_parser
from tunetrace.cli.train import add_train_parser
from tunetrace.errors import TunetraceError

_PRIVATE_UMASK = 0o027


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunetrace",
        description="Recognise catalog recordings in audio files and live streams.",
    )
    parser.add_argument("--version", action="version", version=f"tunetrace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_catalog_parsers(sub)
    for add_parser in (add_eval_parser, add_train_parser, add_models_parser, add_serve_parser):
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.func
    # The catalog, play log and outbox are nobody else's business: new files 0640, folders 0750
    # (systemd's unit sets the same with UMask=0027). Restored on return, for embedding callers.
    previous_umask = os.umask(0)
    os.umask(previous_umask | _PRIVATE_UMASK)
    try:
        return handler(args)
    except TunetraceError as exc:
        label, code = ERROR_EXITS.get(type(exc), exit_for(exc))
        print(f"{label}: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        os.umask(previous_umask)
