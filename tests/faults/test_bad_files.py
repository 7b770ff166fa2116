"""The bad-file zoo against the real CLI (ffmpeg, the shipped encoder, Milvus Lite).

Each odd input gets a one-line error naming the file and the reason, the rest of the batch goes
on, and the exit status says "some inputs failed" (1).  Silence and tiny clips are answered
honestly, and a long file is identified in bounded memory.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import numpy as np
import pytest

from tests.faults.cli import as_nobody, run_tunetrace
from tests.fixtures.audio import Clip, run_ffmpeg, write_wav
from tests.fixtures.milvus import BuiltCatalog, private_catalog_copy, write_config
from tunetrace.audio.decode import decode_file
from tunetrace.cli.main import main
from tunetrace.errors import DecodeError
from tunetrace.sources.ffmpeg import ffmpeg_args

pytestmark = pytest.mark.usefixtures("restore_logging")  # these tests call the CLI in-process

RATE = 16000
RESULT_KEYS = {
    "file", "match", "track_id", "title", "artist", "album", "isrc", "offset_s", "confidence",
    "speed_ratio", "speed_measured", "aligned_windows", "verified", "latency_s", "note", "query_s", "error",
}


@pytest.fixture
def catalog_config(clip_catalog: BuiltCatalog, tmp_path: Path) -> Path:
    """A private copy of the three-clip catalog and a config pointing at it."""
    data_dir = private_catalog_copy(clip_catalog, tmp_path / "state")
    return write_config(data_dir)


@pytest.fixture
def zoo(tmp_path: Path, real_clips: list[Clip]) -> dict[str, Path]:
    """Files a user's folder really contains, one of each kind of trouble."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    good = folder / "good.wav"
    run_ffmpeg(["-ss", "5", "-t", "12", "-i", str(real_clips[0].path), "-ac", "1", str(good)])
    run_ffmpeg(["-t", "3", "-i", str(real_clips[1].path), "-ac", "1", str(folder / "a.wav")])
    run_ffmpeg(["-t", "3", "-i", str(real_clips[2].path), "-ac", "1", str(folder / "b.wav")])
    # ffmpeg would read this name as its concat protocol: two other files, 6 s of "music".
    concat = folder / "concat:a.wav|b.wav"
    concat.write_bytes(os.urandom(4096))
    fifo = folder / "fifo.wav"
    os.mkfifo(fifo)
    loop = folder / "loop.wav"
    loop.symlink_to(loop)
    return {
        "good": good, "concat": concat, "fifo": fifo, "loop": loop,
        "long_name": folder / ("x" * 300 + ".wav"),
        "silent": write_wav(folder / "silent.wav", np.zeros(10 * RATE, np.float32), RATE),
        "tiny": write_wav(folder / "tiny.wav", np.full(RATE // 5, 0.2, np.float32), RATE),
    }


def _identify_json(
    config: Path, files: list[Path], capsys: pytest.CaptureFixture[str],
) -> tuple[int, dict[str, dict[str, object]]]:
    status = main(["identify", "--json", "-c", str(config), *map(str, files)])
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(files), lines
    return status, {Path(str(r["file"])).name[:20]: r for r in records}


def test_each_bad_file_is_one_error_record_and_the_batch_goes_on(
    catalog_config: Path, zoo: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    order = ["concat", "fifo", "good", "loop", "long_name", "silent", "tiny"]
    status, records = _identify_json(catalog_config, [zoo[k] for k in order], capsys)
    assert status == 1
    for record in records.values():
        assert set(record) == RESULT_KEYS, record
    by_kind = {kind: records[zoo[kind].name[:20]] for kind in order}
    assert by_kind["good"]["match"] is True and by_kind["good"]["error"] is None
    assert "cannot decode audio" in str(by_kind["concat"]["error"]), "junk is junk, not two other files"
    assert "not a regular file" in str(by_kind["fifo"]["error"])
    assert "symbolic link loop" in str(by_kind["loop"]["error"])
    assert "file name is too long" in str(by_kind["long_name"]["error"])
    assert by_kind["silent"]["match"] is False and by_kind["silent"]["note"] == "the audio is silent"
    assert by_kind["tiny"]["match"] is False
    assert by_kind["tiny"]["note"] == "the audio is shorter than one window"


def test_a_newline_in_a_file_name_cannot_forge_an_output_line(
    catalog_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    forged = tmp_path / "x.wav\nother.wav: Fake Song by Nobody at 1.0 s (confidence 1.00)"
    forged.write_bytes(b"")
    assert main(["identify", "-c", str(catalog_config), str(forged)]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    assert "\\n" in out and "error: " in out


def test_a_file_in_a_folder_this_user_cannot_enter_is_a_clear_error(
    zoo: dict[str, Path], tmp_path: Path,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    hidden = locked / "song.wav"
    hidden.write_bytes(zoo["good"].read_bytes())
    locked.chmod(0o700)
    with as_nobody(), pytest.raises(DecodeError) as raised:
        decode_file(hidden, RATE)
    assert str(raised.value) == (
        f"{hidden}: permission denied; make it (and its folders) readable by this user"
    )


@pytest.mark.slow
def test_identify_of_a_one_hour_file_stays_in_bounded_memory(
    catalog_config: Path, real_clips: list[Clip], tmp_path: Path,
) -> None:
    """A 1-hour file (looped real music, cheap 8 kHz PCM) costs what a 60 s query does."""
    long_file = tmp_path / "one-hour.wav"
    run_ffmpeg([
        "-stream_loop", "-1", "-i", str(real_clips[0].path), "-t", "3600", "-ac", "1", "-ar", "8000",
        "-c:a", "pcm_s16le", str(long_file),
    ])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = run_tunetrace("identify", "--json", "-c", str(catalog_config), str(long_file), timeout_s=300)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["match"] is True, record
    assert record["query_s"] == 60.0
    assert "matcher.max_query_s" in record["note"]
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB (before: {before / 1024:.0f} MiB)"


def test_a_station_file_is_named_to_ffmpeg_by_the_file_protocol_only(tmp_path: Path) -> None:
    odd = tmp_path / "concat:a.wav|b.wav"
    args = ffmpeg_args(str(odd), RATE, realtime=False, loop=False)
    assert args[args.index("-i") + 1] == f"file:{odd}"
    assert args[args.index("-protocol_whitelist") + 1] == "file"
