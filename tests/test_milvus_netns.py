"""``scripts/milvus-netns``: a milvus-server beside a command in a private network namespace, on a
fresh data directory, or restarted on an earlier one with ``--reuse`` (a big catalog built once and
measured by later sessions without rebuilding it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "milvus-netns"
RUN_TIMEOUT_S = 420

WRITE = """
from pymilvus import MilvusClient
c = MilvusClient(uri="http://127.0.0.1:19530")
c.create_collection("kept", dimension=4)
c.insert("kept", [{"id": i, "vector": [float(i), 1.0, 0.0, 0.0]} for i in range(5)])
c.flush("kept")
"""
READ = """
from pymilvus import MilvusClient
c = MilvusClient(uri="http://127.0.0.1:19530")
c.load_collection("kept")
print("rows", c.query("kept", filter="", output_fields=["count(*)"])[0]["count(*)"])
print("ifaces", open("/proc/net/dev").read().count(":"))
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    env.pop("TUNETRACE_IN_NETNS", None)
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, check=False,
    )


def test_an_existing_data_directory_is_refused_without_reuse(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    done = _run(str(tmp_path / "old"), "true")
    assert done.returncode == 64 and "--reuse" in done.stderr


def test_reuse_refuses_a_folder_that_is_not_a_servers_data(tmp_path: Path) -> None:
    done = _run("--reuse", str(tmp_path), "true")
    assert done.returncode == 64 and "not the data directory of an earlier milvus-server" in done.stderr


@pytest.mark.slow
def test_a_server_restarted_on_its_data_directory_keeps_the_collections(tmp_path: Path) -> None:
    data = tmp_path / "m"
    first = _run(str(data), sys.executable, "-c", WRITE)
    assert first.returncode == 0, first.stderr + (tmp_path / "m.log").read_text()[-2000:]
    again = _run("--reuse", str(data), sys.executable, "-c", READ)
    assert again.returncode == 0, again.stderr + (tmp_path / "m.log").read_text()[-2000:]
    assert "rows 5" in again.stdout
    assert "ifaces 1" in again.stdout  # only lo in the namespace the command saw
