"""The code style the project promises (ruff, mypy strict) is checked by the same command as the
tests, so a lint error fails CI like a broken test does instead of waiting for a reviewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=280,
    )


def test_ruff_finds_nothing_in_the_package_and_the_tests() -> None:
    result = _run("ruff", "check", "--no-cache", "daemon", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing_in_the_package() -> None:
    # The configuration (strict, the package, the stubs ignored) is pyproject.toml's [tool.mypy].
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
