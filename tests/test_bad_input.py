"""Bad input never costs good input: each problem gets its own clear message, the rest is ingested.

Tests run as root, so ``chmod 000`` does not make a file unreadable; a link to ``/proc/self/mem``
does (reading its first page fails with EIO for any user), and a broken link, an empty file, a
text file named ``.mp3`` and folders without audio cover the other ways a library goes wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.audio import synthetic_music, write_wav
from tests.fixtures.milvus import write_config
from tunetrace.catalog.ingest import ingest
from tunetrace.cli import main
from tunetrace.config import IngestConfig, MilvusConfig, load_config
from tunetrace.encoders import create_encoder
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.store.milvus import CatalogStore

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("restore_logging")  # these tests call the CLI in-process
ENCODER = SpectralEncoder()
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A folder as users have them: two good recordings among every kind of bad file."""
    folder = tmp_path / "library"
    (folder / "album.mp3").mkdir(parents=True)  # a folder that looks like a file
    for seed in (11, 12):
        write_wav(folder / f"good-{seed}.wav", synthetic_music(6.0, 16000, seed), 16000)
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "liner-notes.mp3").write_text("Track 1: Overture\n" * 40, encoding="utf-8")
    (folder / "gone.flac").symlink_to(tmp_path / "deleted-long-ago.flac")
    (folder / "unreadable.ogg").symlink_to("/proc/self/mem")
    (folder / "cover.jpg").write_bytes(b"\xff\xd8\xff")  # not an audio suffix: ignored, not an error
    return folder


@pytest.fixture
def store(milvus_lite_uri: str) -> Iterator[CatalogStore]:
    with CatalogStore.open(MilvusConfig(), milvus_lite_uri, ENCODER.info, create=True) as opened:
        yield opened


def test_each_bad_file_in_a_folder_is_reported_and_the_good_ones_are_ingested(
    library: Path, store: CatalogStore
) -> None:
    summary = ingest([library], ENCODER, store, IngestConfig())

    outcomes = {o.path.name: o for o in summary.outcomes}
    assert set(outcomes) == {"good-11.wav", "good-12.wav", "empty.mp3", "liner-notes.mp3", "gone.flac",
                             "unreadable.ogg"}
    assert outcomes["good-11.wav"].status == outcomes["good-12.wav"].status == "added"
    reasons = {name: o.reason for name, o in outcomes.items() if o.status == "failed"}
    assert reasons == {
        "empty.mp3": f"{library / 'empty.mp3'}: the file is empty (0 bytes)",
        "liner-notes.mp3": (
            f"{library / 'liner-notes.mp3'}: not a readable audio file: "
            "Invalid data found when processing input"
        ),
        "gone.flac": f"{library / 'gone.flac'}: a broken symbolic link",
        # Outside the ingested folder: reported and not followed (ingest.follow_symlinks_out).
        "unreadable.ogg": (
            f"{library / 'unreadable.ogg'}: a symbolic link out of {library} (to "
            f"{(library / 'unreadable.ogg').resolve()}); not followed: name the target itself, or set "
            "ingest.follow_symlinks_out: true"
        ),
    }
    assert sorted(t.title for t in store.tracks()) == ["good-11", "good-12"]


def test_the_ingest_command_reports_every_problem_and_exits_1(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_folder = tmp_path / "no-audio-here"
    empty_folder.mkdir()
    (empty_folder / "readme.txt").write_text("nothing to hear\n")
    config_path = write_config(tmp_path / "state")
    named = [library / "good-11.wav", library / "album.mp3", empty_folder, tmp_path / "typo.wav", library]

    assert main(["ingest", "-q", "-c", str(config_path), *map(str, named)]) == 1

    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'typo.wav'}: no such file or folder" in captured.err
    assert f"error: {library / 'album.mp3'}: a folder with no audio files in it" in captured.err
    assert f"error: {empty_folder}: a folder with no audio files in it" in captured.err
    # good-11.wav is named and also found in the folder: the second sighting is a skip, not a copy.
    assert captured.out.startswith("added 2, skipped 1 (already in the catalog), failed 4; ")
    for name in ("empty.mp3", "liner-notes.mp3", "gone.flac", "unreadable.ogg"):
        assert f"  failed: {library / name}: " in captured.out
    config = load_config(config_path)
    info = create_encoder(config.encoder).info  # the CLI ingested with the configured encoder
    with CatalogStore.open(config.milvus, config.milvus_uri(), info, create=False) as store:
        assert sorted(t.title for t in store.tracks()) == ["good-11", "good-12"]


def test_a_folder_with_no_audio_alone_says_what_was_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cover.png").write_bytes(b"\x89PNG")
    assert main(["ingest", "-c", str(write_config(tmp_path / "state")), str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"error: {folder}: a folder with no audio files in it" in err
    assert "nothing to ingest: no audio files found (looked for .wav, .mp3, .ogg" in err
    assert not (tmp_path / "state" / "catalog.db").exists()  # nothing was created for nothing


def test_partial_failure_is_exit_status_1_for_the_shell(library: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "state")
    path = os.pathsep.join([str(REPO / "daemon"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-m", "tunetrace", "ingest", "-q", "-c", str(config_path), str(library)],
        capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("added 2, skipped 0 (already in the catalog), failed 4; ")


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("ingest:\n  insert_batch: 50000\n", "ingest.insert_batch: Input should be less than or equal to 1"),
        ("ingest:\n  extentions: [.wav]\n", "ingest.extentions: unknown key; valid keys here: extensions"),
        ("encoder: spectral\n", "encoder: Input should be a valid dictionary"),
        ("matcher:\n  top_k: [\n", "not valid YAML at line 4"),
    ],
    ids=["out-of-range", "misspelt-key", "wrong-shape", "broken-yaml"],
)
def test_an_invalid_config_stops_ingest_before_any_work_with_78(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], config_text: str, expected: str
) -> None:
    config_path = tmp_path / "tunetrace.yaml"
    config_path.write_text(f"data_dir: {tmp_path / 'state'}\n{config_text}", encoding="utf-8")
    assert main(["ingest", "-q", "-c", str(config_path), str(library)]) == 78
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {config_path}: ")
    assert expected in err
    assert not (tmp_path / "state").exists()


def test_a_missing_config_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "absent.yaml"
    assert main(["ingest", "-c", str(absent), str(tmp_path)]) == 78
    assert f"config error: {absent}: cannot read the config file: No such file or directory" in (
        capsys.readouterr().err
    )
