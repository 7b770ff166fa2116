"""``tunetrace eval`` argument parsing (the implementation is in ``evaluation.run``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_eval_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("eval", help="measure recognition quality on excerpts")
    p.add_argument("--config", "-c", type=Path, default=None)
    p.add_argument("--catalog", type=Path, required=True, help="folder of catalog tracks")
    p.add_argument("--holdout", type=Path, required=True, help="folder of tracks NOT in the catalog")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    raise SystemExit("tunetrace eval: not implemented yet")
