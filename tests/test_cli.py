"""The command line as a user and a script see it: output formats, exit codes, messages.

Commands run in-process through ``tunetrace.cli.main`` (its return value is the exit status);
one test runs ``python -m tunetrace`` as a real process to pin the status the shell sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.audio import Clip, cut_clip
from tests.fixtures.milvus import BuiltCatalog, build_catalog, write_config
from tunetrace.cli import main
from tunetrace.encoders import create_encoder

REPO = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"file", "match", "track_id", "title", "artist", "offset_s", "confidence"}
SUBPROCESS_TIMEOUT_S = 180


pytestmark = pytest.mark.usefixtures("restore_logging")


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m tunetrace ARGS`` as its own process, importing this checkout's package."""
    path = os.pathsep.join([str(REPO / "daemon"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "tunetrace", *args], capture_output=True, text=True, env=env,
        timeout=SUBPROCESS_TIMEOUT_S, check=False, cwd=REPO,
    )


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory, real_clips: list[Clip]) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("queries")
    unreadable = folder / "liner-notes.mp3"
    unreadable.write_text("not audio at all\n" * 40)
    return {
        "second": cut_clip(real_clips[1].path, folder / "second.mp3", 17.2, 10.0, 44100).path,
        "first": cut_clip(real_clips[0].path, folder / "first.wav", 3.0, 10.0).path,
        "unreadable": unreadable,
        "missing": folder / "missing.ogg",
    }


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_identify_json_prints_one_object_per_file_in_input_order(
    clip_catalog: BuiltCatalog, real_clips: list[Clip], queries: dict[str, Path], holdout_clips: list[Clip],
    capsys: pytest.CaptureFixture[str],
) -> None:
    order = [
        queries["second"], queries["unreadable"], holdout_clips[0].path, queries["missing"], queries["first"],
    ]

    status = main(["identify", "--json", "-c", str(clip_catalog.config_path), *map(str, order)])

    assert status == 1  # some inputs failed, the others were answered
    records = json_lines(capsys.readouterr().out)
    assert [r["file"] for r in records] == [str(p) for p in order]
    for record in records:
        assert record.keys() >= RESULT_KEYS

    second, unreadable, holdout, missing, first = records
    expected_second = clip_catalog.tracks[real_clips[1].path]
    assert second["match"] is True
    assert second["track_id"] == expected_second.track_id
    assert second["title"] == expected_second.title
    assert second["artist"] == ""
    assert isinstance(second["offset_s"], float) and abs(second["offset_s"] - 17.2) <= 0.5
    assert isinstance(second["confidence"], float) and 0.25 <= second["confidence"] <= 1.0
    assert second["error"] is None

    assert first["match"] is True
    assert first["track_id"] == clip_catalog.tracks[real_clips[0].path].track_id

    assert holdout["match"] is False
    assert holdout["track_id"] is None and holdout["title"] is None and holdout["offset_s"] is None
    assert holdout["error"] is None

    assert unreadable["match"] is False
    bad = queries["unreadable"]
    assert unreadable["error"] == f"{bad}: cannot decode audio: Invalid data found when processing input"
    assert missing["match"] is False
    assert missing["error"] == f"{queries['missing']}: no such file"


def test_files_answered_in_groups_get_the_answers_of_one_at_a_time(
    clip_catalog: BuiltCatalog, queries: dict[str, Path], holdout_clips: list[Clip],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--batch-files``: one search per group; a bad file in a group is reported and the rest answered."""
    order = [
        queries["second"], queries["unreadable"], holdout_clips[0].path, queries["missing"], queries["first"],
    ]
    config = str(clip_catalog.config_path)
    assert main(["identify", "--json", "-c", config, *map(str, order)]) == 1
    alone = json_lines(capsys.readouterr().out)
    assert main(["identify", "--json", "--batch-files", "3", "-c", config, *map(str, order)]) == 1
    grouped = json_lines(capsys.readouterr().out)

    assert [r["file"] for r in grouped] == [str(p) for p in order]
    for one, other in zip(alone, grouped, strict=True):
        for key in ("match", "track_id", "offset_s", "error", "note", "aligned_windows"):
            assert one[key] == other[key], (key, one, other)
    assert [r["match"] for r in grouped] == [True, False, False, False, True]
    assert grouped[1]["error"] and grouped[3]["error"]


def test_identify_prints_a_readable_line_per_file(
    clip_catalog: BuiltCatalog, real_clips: list[Clip], queries: dict[str, Path], holdout_clips: list[Clip],
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = [queries["first"], holdout_clips[1].path, queries["missing"]]
    assert main(["identify", "-c", str(clip_catalog.config_path), *map(str, files)]) == 1
    lines = capsys.readouterr().out.splitlines()
    title = clip_catalog.tracks[real_clips[0].path].title
    assert lines[0].startswith(f"{queries['first']}: {title} at 3.")
    assert "(confidence " in lines[0]
    assert lines[1].startswith(f"{holdout_clips[1].path}: no match (best confidence 0.")
    assert lines[2] == f"{queries['missing']}: error: {queries['missing']}: no such file"


def test_identify_before_any_ingest_says_to_ingest_first(
    tmp_path: Path, queries: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path)
    assert main(["identify", "-c", str(config_path), str(queries["first"])]) == 69
    err = capsys.readouterr().err
    assert "catalog error: the catalog is empty or does not exist yet; run `tunetrace ingest" in err


def test_catalog_list_stats_and_remove(
    tmp_path: Path, synthetic_wavs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = build_catalog(tmp_path / "state", synthetic_wavs)
    config = ["-c", str(catalog.config_path)]
    ids = {path.stem: track.track_id for path, track in catalog.tracks.items()}
    shipped_encoder = create_encoder(catalog.config.encoder).info.encoder_id  # the default encoder built it

    assert main(["catalog", "list", *config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == [str(ids["melody-1"]), "0.2", "min", "melody-1"]

    assert main(["catalog", "list", "--json", *config]) == 0
    listed = json_lines(capsys.readouterr().out)
    assert [r["title"] for r in listed] == ["melody-1", "melody-2", "melody-3"]
    assert listed[1] == {
        "track_id": ids["melody-2"], "title": "melody-2", "artist": "", "album": "", "duration_s": 12.0,
        "source_path": str(synthetic_wavs[1].resolve()), "n_vectors": 23, "isrc": None,
    }

    assert main(["catalog", "stats", "--json", *config]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == {
        "uri": str(tmp_path / "state" / "catalog.db"), "encoder": shipped_encoder, "dimension": 128,
        "metric": "IP", "window_s": 1.0, "hop_s": 0.5, "tracks": 3, "hours": 0.01, "vectors": 69,
        "vector_rows": 69, "index": "FLAT", "index_build": {}, "shards": 1, "warning": None,
    }

    assert main(["catalog", "remove", str(ids["melody-2"]), *config]) == 0
    assert capsys.readouterr().out == f"removed track {ids['melody-2']}\n"
    assert main(["catalog", "stats", "--json", *config]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["tracks"], stats["vectors"], stats["vector_rows"]) == (2, 46, 46)

    assert main(["catalog", "remove", str(ids["melody-2"]), *config]) == 1
    assert f"error: no track with id {ids['melody-2']} in the catalog" in capsys.readouterr().err


def test_check_config_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path)
    assert main(["check-config", "-c", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{config_path}: OK (encoder fingerprint, catalog {tmp_path / 'catalog.db'})")


def test_a_bad_config_exits_78_naming_the_key_as_a_real_process(tmp_path: Path) -> None:
    config_path = tmp_path / "bad.yaml"
    config_path.write_text("matcher:\n  top_k: 0\n  min_confidnce: 0.5\n", encoding="utf-8")

    result = run_module("check-config", "-c", str(config_path))

    assert result.returncode == 78, result.stderr
    assert f"config error: {config_path}: invalid configuration:" in result.stderr
    assert "matcher.top_k: Input should be greater than or equal to 1 (got 0)" in result.stderr
    assert "matcher.min_confidnce: unknown key; valid keys here: " in result.stderr
    assert "min_confidence" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["ingest", "x.wav"], ["identify", "x.wav"], ["catalog", "list"]])
def test_every_command_refuses_a_bad_config_with_78(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "bad.yaml"
    config_path.write_text("encoder:\n  name: spectral\n  treads: 2\n", encoding="utf-8")
    assert main([*command, "-c", str(config_path)]) == 78
    assert "encoder.treads: unknown key; valid keys here: batch_size, model_path, name, threads" in (
        capsys.readouterr().err
    )


def test_an_unset_secret_variable_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TT_CLI_TEST_TOKEN", raising=False)
    config_path = write_config(tmp_path, uri="http://127.0.0.1:9", milvus={"token": "${TT_CLI_TEST_TOKEN}"})
    assert main(["catalog", "stats", "-c", str(config_path)]) == 78
    err = capsys.readouterr().err
    assert "milvus.token: refers to environment variable ${TT_CLI_TEST_TOKEN}, which is not set" in err
