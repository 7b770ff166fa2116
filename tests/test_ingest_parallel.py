"""Ingest in worker processes: the same catalog as one process builds, copies decided once, and the
progress line for a terminal and for a log.

The workers are real ``spawn``ed processes that build their own encoder (the spectral one here:
weight-free) and decode with ffmpeg; the catalog is a real Milvus Lite database.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import synthetic_music, write_wav
from tests.fixtures.processes import process
from tunetrace.audio.decode import decode_file
from tunetrace.catalog.ingest import (
    MAX_ATTEMPTS,
    PARENT_POLL_S,
    IngestSummary,
    ingest,
    worker_count,
    worker_pool,
)
from tunetrace.catalog.progress import IngestProgress, ProgressPrinter
from tunetrace.config import IngestConfig, MilvusConfig
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.errors import ModelError
from tunetrace.store.milvus import CatalogStore

ENCODER = SpectralEncoder()


@pytest.fixture
def store(milvus_lite_uri: str) -> Iterator[CatalogStore]:
    with CatalogStore.open(MilvusConfig(), milvus_lite_uri, ENCODER.info, create=True) as opened:
        yield opened


def _catalog_rows(store: CatalogStore) -> dict[str, tuple[int, float]]:
    return {t.content_hash: (t.n_vectors, round(t.duration_s, 3)) for t in store.tracks()}


def run_workers(paths: list[Path], store: CatalogStore, workers: int = 2) -> IngestSummary:
    return ingest(paths, ENCODER, store, IngestConfig(workers=workers), encoder_factory=SpectralEncoder)


def test_workers_build_the_catalog_one_process_builds(
    synthetic_wavs: list[Path], tmp_path: Path, store: CatalogStore,
) -> None:
    parallel = run_workers(synthetic_wavs, store)
    with CatalogStore.open(MilvusConfig(), str(tmp_path / "inline.db"), ENCODER.info, create=True) as inline:
        one = ingest(synthetic_wavs, ENCODER, inline, IngestConfig(workers=1))
        expected = _catalog_rows(inline)
        probe = decode_file(synthetic_wavs[1], 8000)[None, 36000:44000]  # melody-2 at 4.5 s
        inline_hit = inline.search(ENCODER.embed(probe), top_k=1)[0][0]

    assert sorted(o.status for o in parallel.outcomes) == ["added"] * 3
    assert parallel.vectors == one.vectors
    assert _catalog_rows(store) == expected
    assert store.vector_count() == one.vectors
    hit = store.search(ENCODER.embed(probe), top_k=1)[0][0]
    assert (hit.track_id, hit.offset_s) == (inline_hit.track_id, inline_hit.offset_s) == (
        next(t.track_id for t in store.tracks() if t.title == "melody-2"), 4.5)
    assert np.isclose(hit.similarity, inline_hit.similarity, atol=1e-5)


def test_a_second_run_with_workers_skips_everything(synthetic_wavs: list[Path], store: CatalogStore) -> None:
    run_workers(synthetic_wavs, store)
    count = store.vector_count()
    again = run_workers(synthetic_wavs, store)
    assert [o.status for o in again.outcomes] == ["skipped"] * 3
    assert store.vector_count() == count


def test_a_worker_outlives_the_pipeline_thread_that_started_it() -> None:
    """The pool starts a worker from whichever thread submits first (a pipeline node's); when that
    thread ends, the worker must go on serving, and the pool must still shut down. (A worker tied
    to its starting thread was killed holding the job queue's lock: the next run's shutdown hung.)"""
    pool = worker_pool(2, ENCODER, SpectralEncoder)
    try:
        first: list[int] = []
        node = threading.Thread(target=lambda: first.append(pool.submit(os.getpid).result(timeout=60)))
        node.start()
        node.join()
        time.sleep(4 * PARENT_POLL_S)
        later = [pool.submit(os.getpid).result(timeout=60) for _ in range(4)]  # a broken pool raises
        assert first and first[0] != os.getpid() and os.getpid() not in later
        worker = process(first[0])
        assert worker is not None and worker.running, "the worker the ended thread started is still there"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_copies_of_one_recording_in_one_run_are_stored_once(
    synthetic_wavs: list[Path], store: CatalogStore, workers: int,
) -> None:
    copy = synthetic_wavs[0].parent / "zz copy of melody-1.wav"
    shutil.copyfile(synthetic_wavs[0], copy)
    summary = ingest(
        [*synthetic_wavs, copy], ENCODER, store, IngestConfig(workers=workers),
        encoder_factory=SpectralEncoder,
    )
    statuses = {o.path.name: o.status for o in summary.outcomes}
    assert sorted(statuses.values()) == ["added", "added", "added", "skipped"]
    assert statuses["zz copy of melody-1.wav"] == "skipped"  # decided once melody-1 is stored
    assert len(store.tracks()) == 3
    assert store.vector_count() == sum(t.n_vectors for t in store.tracks())


def test_bad_files_fail_one_by_one_in_workers(tmp_path: Path, store: CatalogStore) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = write_wav(folder / "good.wav", synthetic_music(6.0, 8000, seed=4), 8000)
    (folder / "noise.mp3").write_bytes(b"not audio at all" * 100)
    (folder / "short.wav").write_bytes(good.read_bytes()[:2000])
    summary = run_workers([folder], store)
    by_name = {o.path.name: o for o in summary.outcomes}
    assert by_name["good.wav"].status == "added"
    assert by_name["noise.mp3"].status == "failed"
    assert "noise.mp3" in by_name["noise.mp3"].reason
    assert by_name["short.wav"].status == "failed"
    assert "too short to index" in by_name["short.wav"].reason


def _other_encoder() -> SpectralEncoder:
    raise ModelError("this factory builds no encoder")


def test_a_worker_that_cannot_build_the_encoder_fails_each_file_with_its_reason(
    synthetic_wavs: list[Path], store: CatalogStore, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tunetrace"):
        summary = ingest(synthetic_wavs, ENCODER, store, IngestConfig(workers=2),
                         encoder_factory=_other_encoder)
    assert [o.status for o in summary.outcomes] == ["failed"] * 3
    reason = "the ingest worker failed (this factory builds no encoder)"
    assert all(reason in o.reason for o in summary.outcomes)
    assert store.tracks() == []
    restarts = [r for r in caplog.records if "an ingest worker died" in r.getMessage()]
    assert not restarts, "the workers stay up: new ones would fail the same way"


class _DiesOnce(SpectralEncoder):
    """Ends its worker process in the middle of a file, as the OOM killer would, once in the run
    (the first worker to embed claims ``marker``)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self._marker = marker

    def embed(self, windows: np.ndarray) -> np.ndarray:
        try:
            os.close(os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return super().embed(windows)
        os._exit(70)


class _DiesOnLoudAudio(SpectralEncoder):
    """Ends its worker on every file louder than the fixtures' (peak 0.5): a file that kills
    whichever worker reads it."""

    def embed(self, windows: np.ndarray) -> np.ndarray:
        if float(np.max(np.abs(windows))) > 0.7:
            os._exit(70)
        return super().embed(windows)


def test_a_worker_killed_in_the_middle_of_a_file_costs_a_retry_not_the_rest_of_the_run(
    synthetic_wavs: list[Path], tmp_path: Path, store: CatalogStore, caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "a worker died"
    with caplog.at_level(logging.WARNING, logger="tunetrace"):
        summary = ingest(synthetic_wavs, ENCODER, store, IngestConfig(workers=2),
                         encoder_factory=functools.partial(_DiesOnce, marker))
    assert marker.exists(), "a worker was killed"
    assert [o.status for o in summary.outcomes] == ["added"] * 3
    assert len(store.tracks()) == 3 and store.vector_count() == summary.vectors
    restarts = [r.getMessage() for r in caplog.records if "an ingest worker died" in r.getMessage()]
    assert len(restarts) == 1, restarts


def test_a_file_that_kills_every_worker_fails_after_its_retries_with_the_reason(
    tmp_path: Path, store: CatalogStore, caplog: pytest.LogCaptureFixture,
) -> None:
    loud = write_wav(tmp_path / "loud.wav", synthetic_music(12.0, 16000, seed=7) * 1.96, 16000)
    with caplog.at_level(logging.WARNING, logger="tunetrace"):
        summary = ingest([loud], ENCODER, store, IngestConfig(workers=2), encoder_factory=_DiesOnLoudAudio)
    [outcome] = summary.outcomes
    assert outcome.status == "failed"
    assert "loud.wav: the ingest worker failed" in outcome.reason
    assert "run the same command again" in outcome.reason
    restarts = [r for r in caplog.records if "an ingest worker died" in r.getMessage()]
    assert len(restarts) == MAX_ATTEMPTS - 1, "a new pool for each retry, none after the last try"
    assert store.tracks() == []


def test_zero_workers_means_one_per_core() -> None:
    assert worker_count(3) == 3
    assert worker_count(0) >= 1


# -- progress -----------------------------------------------------------------------------------


def test_the_progress_line_counts_files_audio_rate_and_eta() -> None:
    progress = IngestProgress(total_files=4, total_bytes=4000, started_s=100.0)
    assert progress.line(100.0).endswith("ETA ?")
    progress.done("skipped", 0.0, 1000)  # no time spent: it does not set the pace
    progress.done("added", 600.0, 1000)
    line = progress.line(110.0)
    assert line == ("2/4 files, 0.17 h of audio, 60 s of audio/s, elapsed 0:00:10, ETA 0:00:20")
    progress.done("failed", 0.0, 1000)
    assert progress.line(115.0).startswith("3/4 files (1 failed), ")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_a_plain_line_comes_every_few_seconds() -> None:
    out = io.StringIO()
    clock = _Clock()
    printer = ProgressPrinter(IngestProgress(2, 200, 0.0), out, clock, live=False, every_s=0.05)
    clock.now = 5.0
    printer.done("added", 300.0, 100)
    time.sleep(0.3)  # the ticker prints while no file finishes
    printer.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3
    assert all(line.startswith("progress: 1/2 files, 0.08 h of audio, 60 s of audio/s") for line in lines)
    assert "\r" not in out.getvalue()


def test_on_a_terminal_one_line_is_redrawn_in_place() -> None:
    out = io.StringIO()
    clock = _Clock()
    printer = ProgressPrinter(IngestProgress(2, 200, 0.0), out, clock, live=True, every_s=5.0)
    clock.now = 1.0
    printer.done("added", 100.0, 100)
    clock.now = 2.0
    printer.done("added", 100.0, 100)
    printer.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.startswith("\r1/2 files, ")
    assert "\r2/2 files, 0.06 h of audio, 100 s of audio/s, elapsed 0:00:02, ETA 0:00:00\x1b[K" in text


def test_a_failing_progress_hook_stops_the_run_and_is_raised_instead_of_hanging(
    synthetic_wavs: list[Path], store: CatalogStore,
) -> None:
    """The pipeline's nodes wait on each other; a node that fails must end the run, not leave the
    others waiting for ever (here: the progress output is gone, as with ``ingest | head``)."""
    seen: list[str] = []

    def hook(outcome: object) -> None:
        seen.append(str(outcome))
        raise BrokenPipeError("the progress output was closed")

    started = time.monotonic()
    with pytest.raises(BrokenPipeError, match="progress output was closed"):
        ingest(synthetic_wavs, ENCODER, store, IngestConfig(workers=2), encoder_factory=SpectralEncoder,
               on_file=hook)
    assert len(seen) == 1, "no file is reported after the failure"
    assert time.monotonic() - started < 60
