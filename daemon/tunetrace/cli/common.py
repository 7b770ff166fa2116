"""What every command shares: one exit-code table, ``--config``, loading the config, logging.

Exit codes: 0 success; 1 some inputs failed (the rest were processed); 2 usage; 69 the catalog
or another service is unavailable; 78 (EX_CONFIG) the configuration is invalid, so systemd's
``RestartPreventExitStatus=78`` stops a restart loop.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from tunetrace.config import Config, load_config
from tunetrace.errors import CatalogError, ConfigError, HistoryError, ModelError, TunetraceError
from tunetrace.observe import logs as observe_logs
from tunetrace.observe.logs import LogFormat

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # the type argparse gives ``add_subparsers()``


def add_config_option(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--config`` on a command; ``nested`` actions accept it too without overwriting the parent's."""
    parser.add_argument(
        "--config", "-c", type=Path, default=argparse.SUPPRESS if nested else None,
        help="YAML config (default: $TUNETRACE_CONFIG, else /etc/tunetrace/tunetrace.yaml, "
        "else built-in defaults)",
    )


def load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    configure_logging("DEBUG" if getattr(args, "verbose", False) else config.log_level, config.log_format)
    return config


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr (``observe.logs``: station names, journald priorities, optional JSON)."""
    observe_logs.configure_logging(level, log_format)
    for noisy in ("towhee", "milvus_lite", "faiss"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # pymilvus warns on every iterator over Milvus Lite ("failed to get mvccTs"), and Lite's
    # in-process gRPC server logs a harmless "AllocTimestamp not implemented" trace.
    # Past DEBUG, pymilvus' own ERROR lines are silenced too: each failed request logs a multi-KB
    # traceback that repeats what its exception (reported once by the caller) already says.
    quiet = logging.DEBUG if level == "DEBUG" else logging.CRITICAL
    logging.getLogger("pymilvus").setLevel(quiet)
    logging.getLogger("grpc").setLevel(logging.CRITICAL)


ERROR_EXITS: dict[type[TunetraceError], tuple[str, int]] = {
    ConfigError: ("config error", EXIT_CONFIG),
    ModelError: ("model error", EXIT_CONFIG),
    CatalogError: ("catalog error", EXIT_UNAVAILABLE),
    HistoryError: ("history error", EXIT_UNAVAILABLE),
}


def exit_for(exc: TunetraceError) -> tuple[str, int]:
    """The label and exit status of the closest known base class (subclasses included)."""
    for kind, outcome in ERROR_EXITS.items():
        if isinstance(exc, kind):
            return outcome
    return ("error", EXIT_PARTIAL)
