"""A small real file system that can be filled to the last byte: a tmpfs mounted for one test."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class SmallDisk:
    """A tmpfs of ``size_kib`` at ``path``; ``fill()`` leaves no free block, ``free()`` undoes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / ".filler"

    def fill(self) -> None:
        block = b"\0" * 4096
        with self._filler.open("ab", buffering=0) as handle:
            while True:
                try:
                    handle.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
        with contextlib.suppress(OSError), self._filler.open("ab", buffering=0) as handle:
            while handle.write(b"\0"):  # the last partial block too
                pass

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 2 MiB tmpfs (the issue's probe used this size), unmounted after the test."""
    mount = shutil.which("mount")
    if mount is None:
        raise RuntimeError("mount(8) is missing (Debian: util-linux)")
    target = tmp_path / "disk"
    target.mkdir()
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(target)],
                   check=True, timeout=30, capture_output=True)
    try:
        yield SmallDisk(target)
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, timeout=30, capture_output=True)
