"""Run the real ``tunetrace`` command line in a child process, as a user or systemd would."""

from __future__ import annotations

import os
import subprocess
import sys


def run_tunetrace(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m tunetrace ARGS``; stdout and stderr captured as text, never raising on status."""
    return subprocess.run(
        [sys.executable, "-m", "tunetrace", *args], capture_output=True, text=True, check=False,
        timeout=timeout_s, env={**os.environ, **(env or {})},
    )
