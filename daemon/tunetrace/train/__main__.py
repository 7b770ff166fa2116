"""``python -m tunetrace.train ...`` until the main CLI wires ``tunetrace train``."""

from __future__ import annotations

import argparse
import sys

from tunetrace.train.cli import configure_parser, run_train


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tunetrace.train")
    configure_parser(parser)
    return run_train(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
