"""Run the real ``tunetrace`` command line in a child process, as a user or systemd would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534


def run_tunetrace(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m tunetrace ARGS``; stdout and stderr captured as text, never raising on status."""
    return subprocess.run(
        [sys.executable, "-m", "tunetrace", *args], capture_output=True, text=True, check=False,
        timeout=timeout_s, env={**os.environ, **(env or {})},
    )


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Run a block with the effective ids of ``nobody``, as the systemd unit's dynamic user would.

    The tests run as root, whom file permissions do not stop; the saved ids stay root's, so the
    block can hand them back.  Import what the block needs before entering it (the interpreter's
    own files may be unreadable to ``nobody``).
    """
    if os.geteuid() != 0:
        raise RuntimeError("as_nobody() needs root (scripts/test runs the suite as root)")
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def let_nobody_reach(path: Path) -> None:
    """Make every folder above ``path`` enterable by others (pytest's temporary root is 0700)."""
    for parent in path.parents:
        if parent != Path("/"):
            parent.chmod(parent.stat().st_mode | 0o005)
