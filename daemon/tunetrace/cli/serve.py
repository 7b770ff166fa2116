"""``tunetrace serve``: run the live daemon in the foreground (systemd runs it as ``Type=notify``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve", help="recognise the configured stations continuously and publish plays",
        description="Run the live daemon until SIGTERM/SIGINT. Exit 78: invalid config (not restarted "
                    "by systemd); 69: catalog unavailable.",
    )
    parser.add_argument(
        "--config", "-c", type=Path, default=None,
        help="YAML config (default: $TUNETRACE_CONFIG, else /etc/tunetrace/tunetrace.yaml)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level")
    parser.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio  # only the daemon needs it: one-shot commands start without it

    from tunetrace.cli.common import configure_logging
    from tunetrace.config import load_config
    from tunetrace.service import Service

    config = load_config(args.config)  # ConfigError -> exit 78 in cli.main
    configure_logging("DEBUG" if args.verbose else config.log_level, config.log_format)
    return asyncio.run(Service(config).run())
