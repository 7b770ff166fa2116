"""Title, artist, album and ISRC from real tags (ID3, Vorbis comments, FLAC, MP4) and the CSV, and
a re-tagged file updating its track instead of adding a duplicate.

Files are encoded by ffmpeg and tagged the way taggers write them: ffmpeg writes ID3 ``TSRC`` and
Vorbis ``ISRC`` itself; the MP4 ISRC is the iTunes freeform atom, written here with mutagen (as
MusicBrainz Picard does).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mutagen.mp4 import MP4

from tests.fixtures.audio import run_ffmpeg, synthetic_music, write_wav
from tunetrace.audio.decode import audio_stream_sha256
from tunetrace.catalog.ingest import ingest
from tunetrace.catalog.scan import normalise_isrc
from tunetrace.config import IngestConfig, MilvusConfig
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.events import Play
from tunetrace.store.milvus import CatalogStore

ENCODER = SpectralEncoder()
DURATION_S = 6.0


@pytest.fixture
def store(milvus_lite_uri: str) -> Iterator[CatalogStore]:
    with CatalogStore.open(MilvusConfig(), milvus_lite_uri, ENCODER.info, create=True) as opened:
        yield opened


def encode(tmp_path: Path, name: str, seed: int, tags: dict[str, str], codec: tuple[str, ...] = ()) -> Path:
    source = write_wav(tmp_path / f"src-{seed}.wav", synthetic_music(DURATION_S, 16000, seed), 16000)
    target = tmp_path / "library" / name
    target.parent.mkdir(exist_ok=True)
    metadata = [arg for key, value in tags.items() for arg in ("-metadata", f"{key}={value}")]
    run_ffmpeg(["-i", str(source), *codec, *metadata, str(target)])
    return target


def retag(path: Path, tags: dict[str, str]) -> None:
    """Rewrite the file's tags with ffmpeg, copying the audio packets (what a tagger does)."""
    temporary = path.with_name("retagged-" + path.name)
    metadata = [arg for key, value in tags.items() for arg in ("-metadata", f"{key}={value}")]
    run_ffmpeg([
        "-i", str(path), "-map", "0:a", "-c", "copy", "-map_metadata", "-1", *metadata, str(temporary),
    ])
    temporary.replace(path)


def test_tags_of_each_format_give_title_artist_album_and_isrc(tmp_path: Path, store: CatalogStore) -> None:
    common = {"title": "Song", "artist": "Band", "album": "Record"}
    files = {
        "a.mp3": encode(tmp_path, "a.mp3", 1, {**common, "title": "Mp3 Song", "TSRC": "GB-AYE-06-01498"}),
        "b.ogg": encode(tmp_path, "b.ogg", 2, {**common, "title": "Ogg Song", "ISRC": "USRC17607839"},
                        ("-c:a", "libvorbis")),
        "c.flac": encode(tmp_path, "c.flac", 3, {**common, "title": "Flac Song", "ISRC": "FRZ039800212"}),
        "d.m4a": encode(tmp_path, "d.m4a", 4, {**common, "title": "M4a Song"}, ("-c:a", "aac")),
        "e.opus": encode(tmp_path, "e.opus", 5, {**common, "title": "Opus Song", "ISRC": "not an isrc"}),
    }
    mp4 = MP4(files["d.m4a"])
    mp4["----:com.apple.iTunes:ISRC"] = [b"DEA349912345"]
    mp4.save()

    summary = ingest(list(files.values()), ENCODER, store, IngestConfig())

    assert [o.status for o in summary.outcomes] == ["added"] * 5
    by_title = {t.title: t for t in store.tracks()}
    assert sorted(by_title) == ["Flac Song", "M4a Song", "Mp3 Song", "Ogg Song", "Opus Song"]
    assert {t.title: t.isrc for t in by_title.values()} == {
        "Mp3 Song": "GBAYE0601498", "Ogg Song": "USRC17607839", "Flac Song": "FRZ039800212",
        "M4a Song": "DEA349912345", "Opus Song": "",  # a malformed ISRC is dropped, not stored wrong
    }
    assert {(t.artist, t.album) for t in by_title.values()} == {("Band", "Record")}


def test_the_metadata_csv_overrides_the_tags_isrc_included(tmp_path: Path, store: CatalogStore) -> None:
    tagged = encode(tmp_path, "a.mp3", 1, {"title": "Tagged", "TSRC": "GBAYE0601498"})
    sidecar = tmp_path / "meta.csv"
    sidecar.write_text("path,title,isrc\nlibrary/a.mp3,From CSV,us-rc1-76-07840\n", encoding="utf-8")
    ingest([tagged], ENCODER, store, IngestConfig(metadata_csv=sidecar))
    (track,) = store.tracks()
    assert (track.title, track.isrc) == ("From CSV", "USRC17607840")


def test_re_tagging_a_file_updates_its_track_instead_of_adding_a_duplicate(
    tmp_path: Path, store: CatalogStore,
) -> None:
    path = encode(tmp_path, "song.mp3", 7, {"title": "Old Title", "artist": "Band"})
    (first,) = ingest([path], ENCODER, store, IngestConfig()).outcomes
    assert first.track is not None
    vectors = store.vector_count()
    before = path.read_bytes()
    hash_before = audio_stream_sha256(path)

    retag(path, {"title": "New Title", "artist": "Band", "album": "Best Of", "TSRC": "GBAYE0601498"})
    assert path.read_bytes() != before  # the file's bytes changed ...
    assert audio_stream_sha256(path) == hash_before  # ... its audio did not

    (second,) = ingest([path], ENCODER, store, IngestConfig()).outcomes
    assert second.status == "updated"
    (track,) = store.tracks()
    assert track.track_id == first.track.track_id
    assert (track.title, track.album, track.isrc) == ("New Title", "Best Of", "GBAYE0601498")
    assert (track.n_vectors, store.vector_count()) == (first.track.n_vectors, vectors)  # not re-embedded

    (third,) = ingest([path], ENCODER, store, IngestConfig()).outcomes
    assert third.status == "skipped"


def test_isrc_codes_are_normalised_or_dropped() -> None:
    assert normalise_isrc("gb-aye-06-01498") == "GBAYE0601498"
    assert normalise_isrc(" USRC17607839 ") == "USRC17607839"
    assert normalise_isrc("1234") == ""
    assert normalise_isrc("") == ""


def test_a_play_carries_its_isrc_and_null_without_one() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 1, tzinfo=UTC)
    tagged = Play("p", "s", 1, "t", "a", "b", at, 0.0, 0.9, isrc="GBAYE0601498")
    assert tagged.to_json()["isrc"] == "GBAYE0601498"
    assert Play("p", "s", 1, "t", "a", "b", at, 0.0, 0.9).to_json()["isrc"] is None
