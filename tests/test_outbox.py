"""The durable outbox: order, acknowledgement, persistence across restarts and kills, overflow policy."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tunetrace.publish.outbox import Outbox

REPO = Path(__file__).resolve().parents[1]


def fill(outbox: Outbox, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        outbox.append(f"t/{index}", f"payload {index}".encode(), f"id-{index}")


def test_messages_come_back_in_append_order_until_acknowledged(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", max_events=100) as outbox:
        fill(outbox, 5)
        first = outbox.peek(3)
        assert [m.message_id for m in first] == ["id-0", "id-1", "id-2"]
        assert outbox.peek(3) == first  # peeking does not consume
        outbox.ack(first[0].seq)
        outbox.ack(first[1].seq)
        assert [m.message_id for m in outbox.peek(10)] == ["id-2", "id-3", "id-4"]
        assert outbox.peek(10)[0].payload == b"payload 2"
        assert outbox.peek(10)[0].topic == "t/2"
        assert len(outbox) == 3


def test_acknowledging_an_unknown_message_changes_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", max_events=100) as outbox:
        fill(outbox, 2)
        seq = outbox.peek(1)[0].seq
        outbox.ack(seq)
        outbox.ack(seq)
        outbox.ack(10_000)
        assert len(outbox) == 1


def test_undelivered_messages_and_their_order_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"  # parent created on demand
    with Outbox(path, max_events=100) as outbox:
        fill(outbox, 4)
        outbox.ack(outbox.peek(1)[0].seq)
        last_seq = outbox.peek(10)[-1].seq
    with Outbox(path, max_events=100) as outbox:
        assert len(outbox) == 3
        assert [m.message_id for m in outbox.peek(10)] == ["id-1", "id-2", "id-3"]
        for message in outbox.peek(10):
            outbox.ack(message.seq)
        fill(outbox, 1, start=4)
        # Sequence numbers are never reused, even once the outbox was empty.
        assert outbox.peek(1)[0].seq > last_seq


def test_overflow_drops_the_oldest_and_counts_them_persistently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_events=10) as outbox:
        fill(outbox, 15)
        assert len(outbox) == 10
        assert [m.message_id for m in outbox.peek(100)] == [f"id-{i}" for i in range(5, 15)]
        assert outbox.stats().dropped_total == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dropped the 1 oldest" in message for message in warnings)
    with Outbox(path, max_events=10) as outbox:
        assert outbox.stats().dropped_total == 5
        assert outbox.stats().pending == 10


def test_a_smaller_bound_after_restart_trims_on_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, max_events=20) as outbox:
        fill(outbox, 20)
    with Outbox(path, max_events=10) as outbox:
        fill(outbox, 1, start=20)
        assert len(outbox) == 10
        assert outbox.peek(1)[0].message_id == "id-11"
        assert outbox.stats().dropped_total == 11


def test_concurrent_appends_from_threads_are_all_kept(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", max_events=1000) as outbox:
        threads = [threading.Thread(target=fill, args=(outbox, 25, 100 * t)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(outbox) == 100
        assert len({m.message_id for m in outbox.peek(1000)}) == 100


_KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
from tunetrace.publish.outbox import Outbox
outbox = Outbox(Path(sys.argv[1]), max_events=100)
for i in range(7):
    outbox.append("t", b"x", f"id-{i}")
outbox.ack(outbox.peek(1)[0].seq)
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: as if the power went
"""


def test_appends_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(path)], env=env, timeout=60,
                           capture_output=True, text=True, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    with Outbox(path, max_events=100) as outbox:
        assert [m.message_id for m in outbox.peek(100)] == [f"id-{i}" for i in range(1, 7)]


def test_rejects_a_non_positive_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_events"):
        Outbox(tmp_path / "outbox.db", max_events=0)
