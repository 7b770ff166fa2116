"""An interrupted ``tunetrace ingest`` run again finishes the rest; the progress line on a terminal.

The ingest is a real ``python -m tunetrace ingest`` process (worker processes, ffmpeg, the shipped
fingerprint model, Milvus Lite) killed with SIGKILL in the middle of its run: no handler, no
cleanup. The rerun must skip what was stored, add the rest, and leave no duplicate vector and no
track without all of its vectors.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.audio import synthetic_music, write_wav
from tests.fixtures.milvus import write_config
from tests.fixtures.processes import processes

FILES = 12
DURATION_S = 40.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    folder.mkdir()
    for seed in range(FILES):
        write_wav(folder / f"song-{seed:02d}.wav", synthetic_music(DURATION_S, 8000, seed=100 + seed), 8000)
    return folder


def _ingest_command(config: Path, folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunetrace", "ingest", "-c", str(config), *extra, str(folder)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'daemon'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


_STATE = """
import json, sys
from pathlib import Path
from tunetrace.config import load_config
from tunetrace.encoders import create_encoder
from tunetrace.store import open_catalog
config = load_config(Path(sys.argv[1]))
encoder = create_encoder(config.encoder, config.data_dir)
with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
    tracks = store.tracks()
    print(json.dumps([len(tracks), store.vector_count(), sum(t.n_vectors for t in tracks),
                      max((t.n_vectors for t in tracks), default=0)]))
"""


def _catalog_state(config_path: Path) -> tuple[int, int, int, int]:
    """(tracks, vectors stored, vectors the tracks account for, largest vector count of one file),
    read in a process of its own: a Lite catalog stays locked to its opener until that exits."""
    probe = subprocess.run(
        [sys.executable, "-c", _STATE, str(config_path)], env=_env(), capture_output=True, text=True,
        timeout=120, check=True,
    )
    tracks, vectors, accounted, largest = json.loads(probe.stdout)
    return int(tracks), int(vectors), int(accounted), int(largest)


def _start_ingest(
    tmp_path: Path, library: Path, *, own_group: bool = False,
) -> tuple[Path, subprocess.Popen[str]]:
    """A two-worker ``tunetrace ingest`` of ``library`` printing progress every 0.1 s."""
    config = write_config(tmp_path / "state")
    with config.open("a", encoding="utf-8") as handle:
        handle.write("ingest:\n  workers: 2\n")
    proc = subprocess.Popen(
        _ingest_command(config, library, "--progress-every", "0.1"), env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=own_group,
    )
    return config, proc


def _files_done(proc: subprocess.Popen[str], at_least: int) -> int:
    """Read the ingest's progress lines until they count ``at_least`` files done (or 120 s pass)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    progress = re.compile(rf"^progress: (\d+)/{FILES} files")
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, f"ingest ended too early: {proc.communicate()}"
        if (match := progress.match(line)) and int(match.group(1)) >= at_least:
            return int(match.group(1))
    return 0


@pytest.mark.slow
def test_an_ingest_killed_in_the_middle_resumes_without_duplicates(tmp_path: Path, library: Path) -> None:
    config, proc = _start_ingest(tmp_path, library)
    done = _files_done(proc, at_least=3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)  # returns once no child is left holding its stderr: workers died too
    assert proc.returncode == -signal.SIGKILL
    assert 3 <= done < FILES, "the kill must land in the middle of the run"

    stored_before, vectors_before, accounted_before, _ = _catalog_state(config)
    assert 3 <= stored_before < FILES
    assert vectors_before >= accounted_before  # at most the vectors of one unfinished track more

    rerun = subprocess.run(
        _ingest_command(config, library, "-q"), env=_env(), capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(
        f"added {FILES - stored_before}, skipped {stored_before} (already in the catalog), failed 0;"
    )
    tracks, vectors, accounted, largest = _catalog_state(config)
    assert tracks == FILES
    assert vectors == accounted  # no duplicate, no orphan from the killed run
    assert largest == int((DURATION_S - 1.0) / 0.5) + 1  # every track complete


@pytest.mark.slow
def test_ctrl_c_ends_the_ingest_with_its_workers_and_a_rerun_finishes(tmp_path: Path, library: Path) -> None:
    """Ctrl-C on a terminal signals the whole foreground process group: the ingest, its workers and
    their ffmpeg. The ingest must end and leave nothing running. (It hung for ever when a worker's
    own KeyboardInterrupt came back as a step's result and ended a pipeline node.)"""
    config, proc = _start_ingest(tmp_path, library, own_group=True)
    assert _files_done(proc, at_least=2) >= 2
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # hung: leave nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "\ninterrupted\n" in err, err  # (Milvus Lite's server got the signal too: restarted, said so)
    assert "an ingest worker died" not in err, "an interrupted run starts no new workers"
    time.sleep(1.0)  # the workers' parent watch needs at most PARENT_POLL_S
    assert {p.pid: p.cmdline for p in processes() if p.group == proc.pid and p.running} == {}

    rerun = subprocess.run(
        _ingest_command(config, library, "-q"), env=_env(), capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    tracks, vectors, accounted, _ = _catalog_state(config)
    assert tracks == FILES
    assert vectors == accounted


@pytest.mark.slow
def test_on_a_terminal_the_ingest_redraws_one_progress_line(tmp_path: Path, library: Path) -> None:
    config = write_config(tmp_path / "state")
    main_fd, terminal_fd = os.openpty()
    proc = subprocess.Popen(
        _ingest_command(config, library), env=_env(), stdout=subprocess.PIPE, stderr=terminal_fd, text=True,
    )
    os.close(terminal_fd)
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0
    text = seen.decode()
    assert f"\r{FILES}/{FILES} files, 0.13 h of audio, " in text
    assert re.search(r"\r\d+/12 files, .* s of audio/s, elapsed \d:\d\d:\d\d, ETA \d:\d\d:\d\d\x1b\[K", text)
    assert "progress:" not in text  # the plain line is for logs only
