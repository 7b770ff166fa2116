"""The command line; ``main`` is the ``tunetrace`` entry point."""

from tunetrace.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
