"""Catalog updates while the daemon runs, on the embedded default (Milvus Lite), and our own lock.

The daemon runs here (the real ``Service``: fingerprint encoder, Milvus Lite, a station reading a
real clip in a loop at real-time pace); ``tunetrace ingest`` and ``tunetrace catalog remove`` run as
separate processes with the daemon's config, as an operator runs them:

* a track ingested while the daemon runs is recognised on air without a restart;
* a second process that opens the catalog itself is refused with what to do, Milvus Lite's own
  lock file is left alone, and the daemon keeps running;
* a removed track stops being recognised.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakes import fake_track
from tests.fixtures.audio import Clip
from tests.fixtures.milvus import MilvusServer, build_catalog, unique_prefix, write_config
from tests.test_live_e2e import RecordingSink
from tunetrace.audio.decode import decode_file
from tunetrace.catalog.control import ControlServer, Emit, Message, listening, request
from tunetrace.catalog.live import FolderWatch, diff_tracks
from tunetrace.config import load_config
from tunetrace.errors import CatalogBusyError, CatalogError
from tunetrace.service import Service
from tunetrace.store.lock import CatalogLock, owner_file

pytestmark = pytest.mark.usefixtures("restore_logging")
REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 90.0
RECOGNISED_S = 30.0
UNKNOWN_FOR_S = 8.0
"""How long the station plays the not-yet-ingested track first (a play starts within ~3 s once known)."""


def run_module(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m tunetrace ARGS`` as its own process, importing this checkout's package."""
    path = os.pathsep.join([str(REPO / "daemon"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "tunetrace", *args], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": path}, timeout=timeout_s, check=False, cwd=REPO,
    )


async def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, task: asyncio.Task[int],
) -> float:
    """Poll ``condition`` (another process's effect) until it holds; the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not condition():
            assert not task.done(), f"the daemon stopped while waiting for {what}"
            await asyncio.sleep(0.2)
    return time.monotonic() - started


def write_daemon_config(data_dir: Path, clip: Clip) -> Path:
    path = data_dir / "tunetrace.yaml"
    path.write_text(
        f"data_dir: {data_dir}\n"
        "service:\n  health_interval_s: 1\n  catalog_refresh_s: 3600   # changes must not wait for it\n"
        "stations:\n  - name: live\n    source:\n"
        f"      url: {clip.path}\n      realtime: true\n      loop: true\n"
        "    evidence: {before_s: 2, after_s: 8}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_tracks_ingested_and_removed_while_the_daemon_runs_take_effect_on_air(
    real_clips: list[Clip], tmp_path: Path,
) -> None:
    known, newcomer = real_clips[0], real_clips[1]
    data_dir = tmp_path / "data"
    build_catalog(data_dir, [known.path])  # the catalog holds another track; the station plays newcomer
    config_path = write_daemon_config(data_dir, newcomer)
    config = load_config(config_path)
    sink = RecordingSink()
    service = Service(config, sinks=[sink])
    catalog_file = Path(config.milvus_uri()).resolve()
    lite_lock = catalog_file.with_name(f".{catalog_file.name}.lock")
    figures: dict[str, float] = {}

    def started(track_id: int | None = None) -> list[int]:
        return [e.play.track_id for e in sink.events if e.kind == "play_started"
                and (track_id is None or e.play.track_id == track_id)]

    async def scenario() -> None:
        task = asyncio.create_task(service.run())
        try:
            socket = data_dir / "control.sock"
            await wait_for(socket.exists, STARTUP_S, "the control socket", task)
            await asyncio.sleep(UNKNOWN_FOR_S)
            assert started() == [], "nothing is recognised before the track is in the catalog"

            ingested = await asyncio.to_thread(run_module, "ingest", "-q", "--config", str(config_path),
                                               str(newcomer.path))
            assert ingested.returncode == 0, ingested.stderr
            assert ingested.stdout.startswith("added 1, skipped 0"), ingested.stdout
            assert f"the daemon owns this catalog: handing 1 file(s) to it ({socket})" in ingested.stderr
            assert service.live is not None
            track_id = next(t.track_id for t in service.live.tracks
                            if t.source_path == str(newcomer.path.resolve()))
            figures["recognised_after_ingest_s"] = await wait_for(
                lambda: started(track_id) != [], RECOGNISED_S, "the ingested track on air", task)

            refused = await asyncio.to_thread(run_module, "catalog", "list", "--config", str(config_path))
            assert refused.returncode == 69
            daemon = f"process {os.getpid()} (`tunetrace serve`)"
            assert f"is open in the running daemon, {daemon}" in refused.stderr
            assert "stop the daemon first, or move the catalog to a Milvus server" in refused.stderr
            assert "milvus.token" not in refused.stderr
            assert lite_lock.exists(), "the refused process left Milvus Lite's lock file alone"
            assert not task.done()

            removed = await asyncio.to_thread(run_module, "catalog", "remove", str(track_id),
                                              "--config", str(config_path))
            assert removed.returncode == 0, removed.stderr
            assert removed.stdout == (
                f"removed track {track_id} (the running daemon no longer recognises it)\n")
            figures["ended_after_remove_s"] = await wait_for(
                lambda: [e.kind for e in sink.events][-1] == "play_ended", RECOGNISED_S,
                "the removed track's play to end", task)
            plays_before = len(started(track_id))
            await asyncio.sleep(UNKNOWN_FOR_S)
            assert len(started(track_id)) == plays_before, "a removed track is not recognised again"
            assert not task.done()
        finally:
            service.request_stop()
            async with asyncio.timeout(15):
                assert await task == 0

    asyncio.run(scenario())
    assert [e.kind for e in sink.events] == ["play_started", "play_ended"]
    play = sink.events[0].play
    (clip,) = (data_dir / "evidence" / "live").rglob(f"*-{play.play_id}.opus")
    assert clip.parent.name == play.started_at.strftime("%Y-%m-%d")
    assert decode_file(clip, 16000).size / 16000 == pytest.approx(10.0, abs=0.1)
    print(f"figures: {figures}")  # shown with -s: the report's measured latencies


def test_a_second_process_is_refused_with_who_holds_the_catalog(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.db"
    program = (
        "import time; from pathlib import Path; from tunetrace.store.lock import CatalogLock; "
        f"CatalogLock.acquire(Path({str(catalog)!r}), command='tunetrace ingest'); "
        "print('held', flush=True); time.sleep(60)"
    )
    python_path = os.pathsep.join([str(REPO / "daemon"), os.environ.get("PYTHONPATH", "")])
    holder = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": python_path},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(CatalogBusyError) as refused:
            CatalogLock.acquire(catalog)
        message = str(refused.value)
        assert message.startswith(
            f"the catalog {catalog} is in use by process {holder.pid} (`tunetrace ingest`)")
        assert "Wait for it to finish (or stop it)" in message
        assert holder.poll() is None, "the first process keeps running"
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # The kernel drops the lock with its holder, even on SIGKILL: no stale lock to clean up by hand.
    lock = CatalogLock.acquire(catalog)
    assert owner_file(catalog).exists()
    lock.release()


@pytest.mark.slow
@pytest.mark.milvus_server
def test_with_a_milvus_server_any_process_ingests_and_removes_and_the_daemon_picks_it_up(
    milvus_server: MilvusServer, real_clips: list[Clip], tmp_path: Path,
) -> None:
    """Another process (its own data_dir, as on another machine) writes the shared catalog; the
    daemon sees the new track within ``service.catalog_refresh_s`` and the removal likewise."""
    known, newcomer = real_clips[0], real_clips[2]
    prefix = unique_prefix("livecat")
    build_catalog(tmp_path / "seed", [known.path], milvus_server.uri, prefix)
    daemon_dir, other_dir = tmp_path / "daemon", tmp_path / "elsewhere"
    daemon_dir.mkdir()
    refresh_s = 2.0
    config_path = daemon_dir / "tunetrace.yaml"
    config_path.write_text(
        f"data_dir: {daemon_dir}\n"
        f"milvus:\n  uri: {milvus_server.uri}\n  collection_prefix: {prefix}\n  timeout_s: 10\n"
        f"service:\n  health_interval_s: 1\n  catalog_refresh_s: {refresh_s}\n"
        f"stations:\n  - name: live\n    source:\n      url: {newcomer.path}\n      realtime: true\n"
        "      loop: true\n",
        encoding="utf-8",
    )
    other_config = write_config(other_dir, milvus_server.uri, prefix)
    sink = RecordingSink()
    service = Service(load_config(config_path), sinks=[sink])
    figures: dict[str, float] = {}

    def started() -> int:
        return sum(e.kind == "play_started" for e in sink.events)

    async def scenario() -> None:
        task = asyncio.create_task(service.run())
        try:
            await wait_for(lambda: service.live is not None and service.stations != [], STARTUP_S,
                           "the daemon to start", task)
            await asyncio.sleep(UNKNOWN_FOR_S)
            assert started() == 0

            ingested = await asyncio.to_thread(run_module, "ingest", "-q", "--config", str(other_config),
                                               str(newcomer.path))
            assert ingested.returncode == 0, ingested.stderr
            assert ingested.stdout.startswith("added 1, skipped 0"), ingested.stdout
            figures["recognised_after_ingest_s"] = await wait_for(
                lambda: started() == 1, RECOGNISED_S + refresh_s, "the new track on air", task)
            track_id = sink.events[0].play.track_id

            removed = await asyncio.to_thread(run_module, "catalog", "remove", str(track_id),
                                              "--config", str(other_config))
            assert removed.returncode == 0, removed.stderr
            figures["ended_after_remove_s"] = await wait_for(
                lambda: sink.events[-1].kind == "play_ended", RECOGNISED_S + refresh_s,
                "the removed track's play to end", task)
            await asyncio.sleep(UNKNOWN_FOR_S)
            assert started() == 1, "a removed track is not recognised again"
        finally:
            service.request_stop()
            async with asyncio.timeout(15):
                assert await task == 0

    asyncio.run(scenario())
    assert [e.kind for e in sink.events] == ["play_started", "play_ended"]
    assert sink.events[0].play.title == newcomer.path.stem
    print(f"figures (server): {figures}")  # shown with -s: the report's measured latencies


def test_the_folder_watch_reports_a_file_once_it_has_stopped_changing(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    (folder / "album").mkdir(parents=True)
    watch = FolderWatch(folder, (".wav",))
    song = folder / "album" / "song.wav"
    song.write_bytes(b"RIFF....")
    (folder / "cover.jpg").write_bytes(b"jpg")
    assert watch.poll() == []  # seen once: it may still be being copied
    song.write_bytes(b"RIFF........")  # it was: it grew
    assert watch.poll() == []
    assert watch.poll() == [song]  # unchanged for one poll: ready
    assert watch.poll() == []  # reported once
    song.write_bytes(b"RIFF....retagged")
    os.utime(song, ns=(1, 2))
    assert watch.poll() == []
    assert watch.poll() == [song]  # changed (re-tagged), then stable: reported again
    watch.forget([song])
    assert watch.poll() == [song]  # its ingest failed: offered again


@pytest.mark.slow
def test_a_file_dropped_into_the_watched_folder_is_recognised_on_air(
    real_clips: list[Clip], tmp_path: Path,
) -> None:
    known, newcomer = real_clips[0], real_clips[1]
    data_dir, incoming = tmp_path / "data", tmp_path / "incoming"
    incoming.mkdir()
    build_catalog(data_dir, [known.path])
    config_path = write_daemon_config(data_dir, newcomer)
    with config_path.open("a", encoding="utf-8") as handle:
        handle.write(f"ingest:\n  watch_folder: {incoming}\n  watch_interval_s: 1\n")
    sink = RecordingSink()
    service = Service(load_config(config_path), sinks=[sink])
    figures: dict[str, float] = {}

    async def scenario() -> None:
        task = asyncio.create_task(service.run())
        try:
            await wait_for((data_dir / "control.sock").exists, STARTUP_S, "the daemon", task)
            await asyncio.sleep(UNKNOWN_FOR_S)
            assert sink.events == []
            shutil.copy(newcomer.path, incoming / "new.wav")
            figures["recognised_after_copy_s"] = await wait_for(
                lambda: any(e.kind == "play_started" for e in sink.events), RECOGNISED_S,
                "the dropped file's track on air", task)
        finally:
            service.request_stop()
            async with asyncio.timeout(15):
                assert await task == 0

    asyncio.run(scenario())
    assert sink.events[0].play.title == "new"
    print(f"figures (watched folder): {figures}")  # shown with -s


class _Handler:
    """A ``ControlHandler`` that records requests (the real one is exercised by the tests above)."""

    def __init__(self) -> None:
        self.removed: list[int] = []

    async def ingest(self, paths: list[Path], replace: bool, emit: Emit) -> Message:
        for path in paths:
            await emit({"type": "file", "path": str(path), "status": "added"})
        return {"replace": replace}

    async def remove(self, track_id: int) -> Message:
        self.removed.append(track_id)
        return {"removed": True}

    async def refresh(self) -> Message:
        return {"tracks": 0}


def test_the_control_socket_streams_progress_and_refuses_bad_requests(tmp_path: Path) -> None:
    handler = _Handler()
    path = tmp_path / "control.sock"
    progress: list[Message] = []

    async def scenario() -> None:
        server = ControlServer(path, handler)
        await server.start()
        try:
            assert path.stat().st_mode & 0o777 == 0o600  # only the daemon's user (and root)
            done = await asyncio.to_thread(
                request, path, {"op": "ingest", "paths": ["/a.wav", "/b.wav"], "replace": True},
                progress.append)
            assert done == {"type": "done", "replace": True}
            assert [m["path"] for m in progress] == ["/a.wav", "/b.wav"]
            assert (await asyncio.to_thread(request, path, {"op": "remove", "track_id": 7}))["removed"]
            for bad, reason in (({"op": "drop"}, "unknown op 'drop'"),
                                ({"op": "ingest", "paths": "x"}, "'paths' must be a list")):
                with pytest.raises(CatalogError, match=reason):
                    await asyncio.to_thread(request, path, bad)
            assert await asyncio.to_thread(listening, path)
        finally:
            await server.close()
        assert not path.exists() and not listening(path)

    asyncio.run(scenario())
    assert handler.removed == [7]
    with pytest.raises(CatalogError, match="cannot reach the daemon's control socket"):
        request(path, {"op": "refresh"})


def test_a_catalog_change_names_added_removed_and_re_tagged_tracks() -> None:
    a, b, c = (fake_track(i, f"t{i}", 10, 5.0) for i in (1, 2, 3))
    known = {t.track_id: t for t in (a, b)}
    change = diff_tracks(known, [replace(a, title="t1 (new tags)"), c])
    assert change is not None
    assert change.changed == {1, 2, 3}
    assert change.shape.track_vectors == {1: 10, 3: 10}
    assert diff_tracks(known, [a, b]) is None
