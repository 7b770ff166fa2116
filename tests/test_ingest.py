"""The towhee ingest pipeline end to end (in one process): files -> decode -> spectral encoder -> Milvus Lite.

Idempotence is by content: a second run skips every file and adds no vector, ``replace`` swaps a
track's vectors without leaving duplicates, and a renamed copy is still the same recording.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import run_ffmpeg, synthetic_music, write_wav
from tests.fixtures.milvus import write_config
from tunetrace.audio.decode import audio_stream_sha256, decode_file
from tunetrace.catalog.ingest import FileOutcome, IngestSummary, ingest
from tunetrace.catalog.scan import scan_paths
from tunetrace.cli import main
from tunetrace.config import IngestConfig, MilvusConfig
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.errors import ConfigError
from tunetrace.store.milvus import CatalogStore

ENCODER = SpectralEncoder()
pytestmark = pytest.mark.usefixtures("restore_logging")  # these tests call the CLI in-process
DURATION_S = 12.0
VECTORS_PER_TRACK = int((DURATION_S - ENCODER.info.window_s) / ENCODER.info.hop_s) + 1


@pytest.fixture
def store(milvus_lite_uri: str) -> Iterator[CatalogStore]:
    with CatalogStore.open(MilvusConfig(), milvus_lite_uri, ENCODER.info, create=True) as opened:
        yield opened


def run(
    paths: list[Path], store: CatalogStore, config: IngestConfig | None = None, *, replace: bool = False
) -> IngestSummary:
    return ingest(paths, ENCODER, store, config or IngestConfig(), replace=replace)


def test_every_file_becomes_a_complete_track(synthetic_wavs: list[Path], store: CatalogStore) -> None:
    seen: list[FileOutcome] = []
    summary = ingest(
        synthetic_wavs, ENCODER, store, IngestConfig(insert_batch=10), batch_size=7, on_file=seen.append
    )

    assert [o.status for o in summary.outcomes] == ["added"] * 3
    assert seen == summary.outcomes  # progress is reported per file, in order
    assert summary.added == 3
    assert summary.failures == []
    assert summary.vectors == 3 * VECTORS_PER_TRACK
    assert summary.audio_s == pytest.approx(3 * DURATION_S, abs=0.01)
    assert summary.wall_s > 0
    assert store.vector_count() == 3 * VECTORS_PER_TRACK  # inserted in batches of 10, none lost

    tracks = store.tracks()
    assert [t.title for t in tracks] == ["melody-1", "melody-2", "melody-3"]
    for track, path in zip(tracks, synthetic_wavs, strict=True):
        assert track.n_vectors == VECTORS_PER_TRACK
        assert track.duration_s == pytest.approx(DURATION_S, abs=0.01)
        assert track.source_path == str(path.resolve())
        assert track.content_hash == audio_stream_sha256(path)  # the audio, not the file's bytes


def test_each_indexed_window_is_found_at_its_offset(synthetic_wavs: list[Path], store: CatalogStore) -> None:
    run(synthetic_wavs, store)
    audio = decode_file(synthetic_wavs[1], ENCODER.info.sample_rate)  # melody-2
    start = int(4.5 * 8000)
    hits = store.search(ENCODER.embed(audio[None, start : start + 8000]), top_k=1)[0]
    track = next(t for t in store.tracks() if t.title == "melody-2")
    assert hits[0].track_id == track.track_id
    assert hits[0].offset_s == pytest.approx(4.5)
    assert hits[0].similarity > 0.95


def test_a_second_run_skips_every_file_and_adds_no_vectors(
    synthetic_wavs: list[Path], store: CatalogStore
) -> None:
    first = run(synthetic_wavs, store)
    count = store.vector_count()

    again = run(synthetic_wavs, store)

    assert [o.status for o in again.outcomes] == ["skipped"] * 3
    assert {o.reason for o in again.outcomes} == {"already in the catalog"}
    assert [o.track for o in again.outcomes] == [o.track for o in first.outcomes]
    assert again.added == 0
    assert again.vectors == 0
    assert store.vector_count() == count
    assert len(store.tracks()) == 3


def test_a_renamed_copy_is_the_same_recording(synthetic_wavs: list[Path], store: CatalogStore) -> None:
    run(synthetic_wavs[:1], store)
    copy = synthetic_wavs[0].parent / "renamed copy.wav"
    shutil.copyfile(synthetic_wavs[0], copy)
    assert [o.status for o in run([copy], store).outcomes] == ["skipped"]
    assert store.vector_count() == VECTORS_PER_TRACK


def test_replace_re_ingests_without_duplicate_vectors(
    synthetic_wavs: list[Path], store: CatalogStore
) -> None:
    first = run(synthetic_wavs, store)
    count = store.vector_count()

    replaced = run(synthetic_wavs, store, replace=True)

    assert [o.status for o in replaced.outcomes] == ["replaced"] * 3
    assert replaced.added == 3
    assert store.vector_count() == count
    assert len(store.tracks()) == 3
    for before, after in zip(first.outcomes, replaced.outcomes, strict=True):
        assert before.track is not None and after.track is not None
        assert after.track.track_id == before.track.track_id
        assert after.track.ingested_at >= before.track.ingested_at


def test_title_artist_and_album_come_from_the_file_tags(tmp_path: Path, store: CatalogStore) -> None:
    plain = write_wav(tmp_path / "plain.wav", synthetic_music(6.0, 16000, seed=7), 16000)
    tagged = tmp_path / "tagged.ogg"
    run_ffmpeg([
        "-i", str(plain), "-metadata", "title=Night Drive", "-metadata", "artist=The Testers",
        "-metadata", "album=Fixtures Vol. 1", "-c:a", "libvorbis", str(tagged),
    ])

    summary = run([tagged], store)

    track = summary.outcomes[0].track
    assert track is not None
    assert (track.title, track.artist, track.album) == ("Night Drive", "The Testers", "Fixtures Vol. 1")
    assert store.tracks() == [track]


def test_a_csv_sidecar_overrides_tags_and_keeps_what_it_leaves_blank(
    tmp_path: Path, store: CatalogStore
) -> None:
    music = tmp_path / "music"
    music.mkdir()
    plain = write_wav(music / "plain.wav", synthetic_music(6.0, 16000, seed=8), 16000)
    tagged = music / "tagged.mp3"
    run_ffmpeg([
        "-i", str(plain), "-metadata", "title=Tag Title", "-metadata", "artist=Tag Artist", str(tagged),
    ])
    sidecar = tmp_path / "metadata.csv"
    sidecar.write_text(
        "path,title,artist,album\n"
        "music/tagged.mp3,CSV Title,,CSV Album\n"
        f"{plain},Plain From CSV,CSV Artist,\n",
        encoding="utf-8",
    )

    summary = run([music], store, IngestConfig(metadata_csv=sidecar))

    by_name = {o.path.name: o.track for o in summary.outcomes}
    tagged_track, plain_track = by_name["tagged.mp3"], by_name["plain.wav"]
    assert tagged_track is not None and plain_track is not None
    assert (tagged_track.title, tagged_track.artist, tagged_track.album) == (
        "CSV Title", "Tag Artist", "CSV Album",
    )
    assert (plain_track.title, plain_track.artist, plain_track.album) == ("Plain From CSV", "CSV Artist", "")


def test_a_sidecar_without_a_path_column_is_a_config_error(tmp_path: Path, store: CatalogStore) -> None:
    sidecar = tmp_path / "metadata.csv"
    sidecar.write_text("file,title\nx.wav,X\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ingest\.metadata_csv: .*\.csv needs a header row with a 'path'"):
        run([tmp_path], store, IngestConfig(metadata_csv=sidecar))
    with pytest.raises(ConfigError, match=r"ingest\.metadata_csv: cannot read .*absent\.csv"):
        run([tmp_path], store, IngestConfig(metadata_csv=tmp_path / "absent.csv"))


def test_folders_are_scanned_recursively_for_audio_only(tmp_path: Path) -> None:
    names = ("b.wav", "sub/a.FLAC", "sub/deeper/c.mp3", ".hidden/d.wav", "sub/.e.wav", "cover.png")
    for relative in (*names, "notes.txt"):
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
    found = list(scan_paths([tmp_path], IngestConfig().extensions))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["b.wav", "sub/a.FLAC", "sub/deeper/c.mp3"]
    # A file named explicitly is always tried, whatever its suffix.
    assert list(scan_paths([tmp_path / "notes.txt"], IngestConfig().extensions)) == [tmp_path / "notes.txt"]


def test_the_ingest_command_prints_a_summary_and_reruns_idempotently(
    tmp_path: Path, synthetic_wavs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path / "state")
    folder = synthetic_wavs[0].parent

    assert main(["ingest", "-q", "-c", str(config_path), str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added 3, skipped 0 (already in the catalog), failed 0; 0.01 h of audio, ")
    assert f", {3 * VECTORS_PER_TRACK} vectors, " in out
    assert "s of audio per second)" in out

    assert main(["ingest", "-q", "-c", str(config_path), str(folder)]) == 0
    assert capsys.readouterr().out.startswith("added 0, skipped 3 (already in the catalog), failed 0; 0.00 h")

    assert main(["ingest", "-q", "--replace", "-c", str(config_path), str(folder)]) == 0
    assert capsys.readouterr().out.startswith("added 3, skipped 0")
    assert main(["catalog", "stats", "--json", "-c", str(config_path)]) == 0
    stats_line = capsys.readouterr().out
    assert f'"vectors": {3 * VECTORS_PER_TRACK}, "vector_rows": {3 * VECTORS_PER_TRACK}' in stats_line


def test_windows_of_one_track_are_embedded_identically_in_any_batch_size(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "x.wav", synthetic_music(5.0, 8000, seed=9), 8000)
    embeddings = []
    for batch_size in (3, 64):
        config = MilvusConfig(collection_prefix=f"b{batch_size}")
        with CatalogStore.open(config, str(tmp_path / "catalog.db"), ENCODER.info, create=True) as store:
            ingest([path], ENCODER, store, IngestConfig(), batch_size=batch_size)
            queries = ENCODER.embed(synthetic_music(5.0, 8000, seed=9)[None, 4000:12000])
            embeddings.append(store.search(queries, top_k=1)[0][0])
    assert {(h.offset_s, round(h.similarity, 4)) for h in embeddings} == {(0.5, 1.0)}
    assert np.isclose(embeddings[0].similarity, 1.0, atol=1e-4)


def test_a_set_stop_event_ends_the_run_before_the_next_file(
    synthetic_wavs: list[Path], store: CatalogStore,
) -> None:
    import threading

    stop = threading.Event()
    seen: list[FileOutcome] = []

    def first_then_stop(outcome: FileOutcome) -> None:
        seen.append(outcome)
        stop.set()  # a daemon shutting down while the first file was ingested

    summary = ingest(synthetic_wavs, ENCODER, store, IngestConfig(), on_file=first_then_stop, stop=stop)
    assert [o.status for o in summary.outcomes] == ["added"]
    assert len(store.tracks()) == 1
