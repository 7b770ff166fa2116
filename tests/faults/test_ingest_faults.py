"""Ingest's bad-input zoo against real ffmpeg and Milvus Lite: nothing wrong is indexed, nothing is
skipped in silence, one bad path never stops the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.faults.cli import as_nobody, let_nobody_reach
from tests.fixtures.audio import synthetic_music, write_wav
from tests.fixtures.milvus import write_config
from tunetrace.catalog.ingest import ingest
from tunetrace.catalog.scan import ScanProblem, scan_paths
from tunetrace.cli.main import main
from tunetrace.config import IngestConfig, MilvusConfig
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.store.milvus import CatalogStore

ENCODER = SpectralEncoder()
pytestmark = pytest.mark.usefixtures("restore_logging")  # these tests call the CLI in-process

RATE = ENCODER.info.sample_rate


@pytest.fixture
def store(milvus_lite_uri: str) -> Iterator[CatalogStore]:
    with CatalogStore.open(MilvusConfig(), milvus_lite_uri, ENCODER.info, create=True) as opened:
        yield opened


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    folder.mkdir()
    write_wav(folder / "good.wav", synthetic_music(6.0, RATE, seed=21), RATE)
    write_wav(folder / "a.wav", synthetic_music(3.0, RATE, seed=22), RATE)
    write_wav(folder / "b.wav", synthetic_music(3.0, RATE, seed=23), RATE)
    write_wav(folder / "silence.wav", np.zeros(30 * RATE, np.float32), RATE)
    write_wav(folder / "blip.wav", synthetic_music(0.2, RATE, seed=24), RATE)
    # Read by ffmpeg as its concat protocol, this junk was once a 6 s "track" made of a.wav and b.wav.
    (folder / "concat:a.wav|b.wav").write_bytes(os.urandom(2048))
    secret = tmp_path / "elsewhere" / "shadow.wav"
    secret.parent.mkdir()
    write_wav(secret, synthetic_music(5.0, RATE, seed=25), RATE)
    (folder / "planted.wav").symlink_to(secret)
    return folder


def test_nothing_wrong_is_indexed_and_every_refusal_says_why(library: Path, store: CatalogStore) -> None:
    summary = ingest([library], ENCODER, store, IngestConfig())
    reasons = {o.path.name: o.reason for o in summary.outcomes if o.status == "failed"}
    assert set(reasons) == {"silence.wav", "blip.wav", "concat:a.wav|b.wav", "planted.wav"}
    assert reasons["silence.wav"].endswith(
        "silent (no window louder than ingest.silence_threshold_dbfs); nothing to index"
    )
    assert "too short to index (0.2 s; a track needs at least 2.0 s, ingest.min_duration_s)" in (
        reasons["blip.wav"]
    )
    assert "not a readable audio file" in reasons["concat:a.wav|b.wav"]
    assert "a symbolic link out of" in reasons["planted.wav"]
    assert sorted(t.title for t in store.tracks()) == ["a", "b", "good"]


def test_the_policies_can_be_relaxed_by_config(library: Path, store: CatalogStore) -> None:
    relaxed = IngestConfig(min_duration_s=0.0, follow_symlinks_out=True)
    summary = ingest([library], ENCODER, store, relaxed)
    added = sorted(o.path.name for o in summary.outcomes if o.status == "added")
    assert added == ["a.wav", "b.wav", "good.wav", "planted.wav"]
    # Shorter than one window is never indexable, whatever min_duration_s says.
    assert [o.path.name for o in summary.failures] == ["blip.wav", "concat:a.wav|b.wav", "silence.wav"]


def test_a_name_too_long_is_one_failure_not_the_end_of_the_run(
    library: Path, store: CatalogStore,
) -> None:
    too_long = library / ("n" * 300 + ".wav")
    summary = ingest([too_long, library / "good.wav"], ENCODER, store, IngestConfig())
    assert [o.status for o in summary.outcomes] == ["failed", "added"]
    assert summary.outcomes[0].reason == f"{too_long}: the file name is too long for the file system"


def test_an_unreadable_subfolder_is_reported_not_skipped_in_silence(library: Path) -> None:
    locked = library / "locked"
    locked.mkdir()
    write_wav(locked / "hidden.wav", synthetic_music(5.0, RATE, seed=26), RATE)
    locked.chmod(0o700)  # root's: ``nobody`` may not list it
    let_nobody_reach(locked)
    problems: list[ScanProblem] = []
    with as_nobody():
        found = [p.name for p in scan_paths([library], IngestConfig().extensions, problems)]
    assert "good.wav" in found and "hidden.wav" not in found
    assert [p.reason for p in problems if p.path == locked] == [
        f"{locked}: cannot list the folder: permission denied; make it readable (and enterable) by this user"
    ]


def test_a_standalone_data_dir_is_not_readable_by_other_users(library: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(state)
    config.write_text(config.read_text() + "encoder: {name: spectral}\n", encoding="utf-8")
    assert main(["ingest", "-q", "-c", str(config), str(library / "good.wav")]) == 0
    created = [p for p in state.rglob("*") if p != config]
    assert any(p.name.startswith("catalog.db") for p in created)
    exposed = [f"{p}: {p.stat().st_mode & 0o777:o}" for p in created if p.stat().st_mode & 0o007]
    assert exposed == []
