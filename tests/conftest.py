"""Fixtures live in ``tests/fixtures/``, one module per real service or data source."""

from __future__ import annotations

import multiprocessing
import sys

import pytest

pytest_plugins = [
    "tests.fixtures.audio",
    "tests.fixtures.milvus",
    "tests.fixtures.mqtt",
    "tests.fixtures.postgres",
    "tests.fixtures.streams",
    "tests.fixtures.systemd",
]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """End the worker processes a test left behind, and say so.

    A process pool whose shutdown hung (its test then failed on the timeout) is joined again when
    Python exits, so one hung worker would keep the whole run from ending and CI would report a
    time-out instead of the failed test. Killing the workers lets that join return.
    """
    leftovers = multiprocessing.active_children()
    for child in leftovers:
        child.kill()
    for child in leftovers:
        child.join(timeout=10)
    if leftovers:
        names = ", ".join(f"{child.name} (pid {child.pid})" for child in leftovers)
        sys.stderr.write(f"\nkilled {len(leftovers)} worker process(es) the tests left running: {names}\n")
