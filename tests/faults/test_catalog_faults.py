"""The catalog failing under the daemon: Milvus Lite's server process killed, and an outage that
does not end (systemd must be told, by the watchdog going quiet)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.processes import processes
from tests.fixtures.systemd import NotifySocket, watched_service
from tunetrace.config import MilvusConfig
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.store.milvus import CatalogStore

ENCODER = SpectralEncoder()


def _lite_children(db_path: str) -> list[int]:
    """This process's Milvus Lite server children serving ``db_path`` (other tests' may run too)."""
    serving = str(Path(db_path).resolve())
    return [
        p.pid for p in processes()
        if p.ppid == os.getpid() and "milvus_lite" in p.cmdline and serving in p.cmdline
    ]


def test_a_killed_milvus_lite_server_is_restarted_and_search_goes_on(
    milvus_lite_uri: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    vectors = np.random.default_rng(1).standard_normal((4, ENCODER.info.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with CatalogStore.open(MilvusConfig(timeout_s=5), milvus_lite_uri, ENCODER.info, create=True) as store:
        assert len(store.search(vectors, 3)) == 4
        children = _lite_children(milvus_lite_uri)
        assert len(children) == 1, children
        os.kill(children[0], signal.SIGKILL)
        time.sleep(0.3)
        capfd.readouterr()
        with caplog.at_level(logging.INFO, logger="tunetrace"):
            started = time.monotonic()
            assert len(store.search(vectors, 3)) == 4, "the same call succeeds, on a new server"
            recovery_s = time.monotonic() - started
            assert len(store.search(vectors, 3)) == 4
        new_children = _lite_children(milvus_lite_uri)
        assert len(new_children) == 1 and new_children != children
    assert recovery_s < 10
    messages = [r.getMessage() for r in caplog.records]
    assert any("server process for" in m and "died (exit status -9)" in m for m in messages), messages
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err, "pymilvus' own tracebacks stay quiet below DEBUG"


def test_an_outage_longer_than_the_limit_stops_the_watchdog(
    tmp_path: Path, notify_socket: NotifySocket,
) -> None:
    """Catalog failures feed the watchdog for ``service.catalog_outage_watchdog_s`` only."""
    # A ping every 1.5 s, silent after 3 s without progress: longer than the catalog retry waits
    # inside the limit (0.5, 1, 2 s), as WatchdogSec=60 is in the unit.
    watched = watched_service(tmp_path, notify_socket, watchdog_usec=3_000_000,
                              service={"catalog_outage_watchdog_s": 2.0})

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(watched.service.run())
        await asyncio.to_thread(notify_socket.wait_for, "READY=1", 10)
        await asyncio.to_thread(notify_socket.wait_for, "WATCHDOG=1", 5)
        watched.catalog.failing = True
        start = watched.pings()
        await asyncio.sleep(2.0)
        early = watched.pings() - start  # inside the limit: a restarting server is waited for
        await asyncio.sleep(3.0)  # past the limit, the next retry and the watchdog's stall window
        late_from = watched.pings()
        await asyncio.sleep(3.0)
        late = watched.pings() - late_from
        watched.service.request_stop()
        async with asyncio.timeout(10):
            assert await task == 0
        return early, late

    early, late = asyncio.run(scenario())
    assert early >= 1, "pings while the outage is young"
    assert late == 0, "no pings once the outage outlasted catalog_outage_watchdog_s: systemd restarts us"
