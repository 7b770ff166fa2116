"""Tracks that share audio: found in a real catalog by their own windows, reported once per pair."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import Clip, write_wav
from tests.fixtures.milvus import build_catalog
from tunetrace.audio.decode import decode_file
from tunetrace.catalog.overlaps import Overlap, OverlapParams, overlaps_of, pairs
from tunetrace.catalog.shared import CACHE_NAME, SharedAudioRecord
from tunetrace.cli import main
from tunetrace.evaluation.degrade import rms
from tunetrace.store.base import Hit, Track
from tunetrace.store.milvus import CatalogStore

pytestmark = pytest.mark.usefixtures("restore_logging")  # these tests call the CLI in-process

RATE = 16000
HOP_S = 0.5


def _track(track_id: int, title: str, duration_s: float) -> Track:
    return Track(track_id, title, "", "", duration_s, f"/music/{title}.wav", f"hash-{track_id}", 0, 0.0)


def _remastered(audio: np.ndarray, seed: int) -> np.ndarray:
    """Another master of the same recording: quieter, a treble tilt, a little noise (30 dB SNR)."""
    tilted = 0.7 * (audio + 0.5 * np.concatenate([[0.0], audio[:-1]]))
    noise = np.random.default_rng(seed).standard_normal(audio.size) * rms(tilted) / 10 ** (30 / 20)
    return (tilted + noise).astype(np.float32)


def test_a_remastered_track_inside_a_medley_is_found_where_it_sits_and_reported_once(
    real_clips: list[Clip], holdout_clips: list[Clip], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    inside = _remastered(decode_file(real_clips[0].path, RATE), seed=5)
    other_music = [decode_file(c.path, RATE) for c in holdout_clips]
    # 10.25 s of music not in the catalog (the clip starts between two catalog windows), a
    # remaster of all of clip 0 (40 s), 10 s of other music.
    lead_in = np.concatenate([other_music[0], np.zeros(RATE // 4, np.float32)])
    medley = write_wav(tmp_path / "medley.wav", np.concatenate([lead_in, inside, other_music[1]]), RATE)
    catalog = build_catalog(tmp_path / "data", [real_clips[0].path, real_clips[1].path, medley])
    clip_id = catalog.tracks[real_clips[0].path].track_id
    medley_id = catalog.tracks[medley].track_id

    assert main(["catalog", "overlaps", "--json", "-q", "-c", str(catalog.config_path)]) == 0

    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(found) == 1, found
    pair = found[0]
    assert (pair["track_id"], pair["other_track_id"]) == (clip_id, medley_id), "the clip is the contained one"
    assert pair["shared_s"] >= 30.0 and pair["share_of_track"] >= 0.75
    assert pair["track_start_s"] <= 6.0
    # The clip's audio starts 10.25 s into the medley: the alignment says where.
    assert pair["other_start_s"] - pair["track_start_s"] == pytest.approx(10.25, abs=HOP_S)


def test_no_overlap_in_a_catalog_of_different_recordings(
    real_clips: list[Clip], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    catalog = build_catalog(tmp_path / "data", [c.path for c in real_clips])

    assert main(["catalog", "overlaps", "-q", "-c", str(catalog.config_path)]) == 0

    assert "no two tracks share 20 s of audio or more" in capsys.readouterr().out


def test_chance_neighbours_scattered_over_alignments_are_not_an_overlap() -> None:
    track, other = _track(1, "a", 120.0), _track(2, "b", 120.0)
    probes = np.arange(0.0, 120.0, 2.0)
    rng = np.random.default_rng(3)
    # Every probe finds the other track, but each at a random place: no alignment repeats.
    hits = [[Hit(i, 2, float(rng.uniform(0, 120)) // HOP_S * HOP_S, 0.9)] for i in range(probes.size)]

    assert overlaps_of(track, probes, hits, {1: track, 2: other}, OverlapParams(HOP_S)) == []


def _found(
    probes: np.ndarray, where: Callable[[int, float], bool], shift_s: float = 30.0, similarity: float = 0.9,
) -> list[list[Hit]]:
    """Each probe that ``where(index, offset)`` picks finds track 2 ``shift_s`` further on."""
    offsets = probes.tolist()
    return [[Hit(i, 2, p + shift_s, similarity)] if where(i, p) else [] for i, p in enumerate(offsets)]


def test_a_short_or_sparse_shared_stretch_is_not_reported() -> None:
    track, other = _track(1, "a", 120.0), _track(2, "b", 120.0)
    probes = np.arange(0.0, 120.0, 2.0)
    by_id = {1: track, 2: other}
    params = OverlapParams(HOP_S, min_shared_s=20.0)
    # 10 s shared (probes 40-48 s, at +30 s in the other track): shorter than 20 s.
    assert overlaps_of(track, probes, _found(probes, lambda i, p: 40.0 <= p < 50.0), by_id, params) == []
    # 40 s spanned, but only every fourth probe agrees: too sparse to be shared audio.
    sparse = _found(probes, lambda i, p: 40.0 <= p < 80.0 and i % 4 == 0)
    assert overlaps_of(track, probes, sparse, by_id, params) == []
    # Neighbours below the similarity floor are not evidence.
    faint = _found(probes, lambda i, p: 40.0 <= p < 80.0, similarity=0.3)
    assert overlaps_of(track, probes, faint, by_id, params) == []


def test_shared_stretches_are_reported_with_where_they_sit_in_each_track() -> None:
    track, other = _track(1, "a", 120.0), _track(2, "b", 120.0)
    probes = np.arange(0.0, 120.0, 2.0)
    by_id = {1: track, 2: other}
    params = OverlapParams(HOP_S, min_shared_s=20.0)
    # The same 40 s found probe after probe.
    (overlap,) = overlaps_of(track, probes, _found(probes, lambda i, p: 40.0 <= p < 80.0), by_id, params)
    assert (overlap.track_start_s, overlap.track_end_s, overlap.other_start_s) == (40.0, 80.0, 70.0)
    # Half the probes a catalog hop further on (a shift between two windows): one alignment.
    straddling = [
        [Hit(i, 2, h.offset_s + HOP_S * (i % 2), h.similarity) for h in hits]
        for i, hits in enumerate(_found(probes, lambda i, p: 40.0 <= p < 80.0))
    ]
    (overlap,) = overlaps_of(track, probes, straddling, by_id, params)
    assert (overlap.track_start_s, overlap.track_end_s) == (40.0, 80.0)
    assert overlap.probes_found == overlap.probes_in_span == 20
    assert 70.0 <= overlap.other_start_s <= 70.0 + HOP_S
    # Two stretches at one alignment with different audio between them: both, and only them, count.
    two = _found(probes, lambda i, p: p < 24.0 or 60.0 <= p < 100.0)
    (overlap,) = overlaps_of(track, probes, two, by_id, params)
    assert (overlap.track_start_s, overlap.track_end_s, overlap.shared_s) == (0.0, 100.0, 64.0)
    assert overlap.share_of_track == pytest.approx(64.0 / 120.0)


def test_each_pair_is_reported_in_the_direction_where_it_is_the_larger_share() -> None:
    short, long = _track(1, "edit", 60.0), _track(2, "album version", 300.0)
    edit_in_album = Overlap(short, long, 0.0, 60.0, 100.0, 60.0, 30, 30)
    album_in_edit = Overlap(long, short, 100.0, 160.0, 0.0, 60.0, 30, 30)

    (chosen,) = pairs([album_in_edit, edit_in_album])

    assert chosen is edit_in_album and chosen.share_of_track == 1.0


class _CountingSearches:
    """The real catalog, counting the searches made through it (how many tracks were probed)."""

    def __init__(self, store: CatalogStore) -> None:
        self.store = store
        self.searches = 0

    def tracks(self) -> list[Track]:
        return self.store.tracks()

    def track_vectors(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        return self.store.track_vectors(track_id)

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        self.searches += 1
        return self.store.search(vectors, top_k)


def test_the_daemons_record_of_shared_audio_searches_each_track_once_and_follows_the_catalog(
    real_clips: list[Clip], holdout_clips: list[Clip], tmp_path: Path,
) -> None:
    """What ``serve`` keeps (``tracker.shared_audio``): a restart searches nothing again, a track
    ingested later is searched alone, a removed track takes its stretches with it, and a cache
    another encoder wrote is not trusted."""
    inside = _remastered(decode_file(real_clips[0].path, RATE), seed=5)
    lead_in = decode_file(holdout_clips[0].path, RATE)
    medley = write_wav(tmp_path / "medley.wav", np.concatenate([lead_in, inside]), RATE)
    catalog = build_catalog(tmp_path / "data", [real_clips[0].path, real_clips[1].path])
    config = catalog.config
    cache = tmp_path / "data" / CACHE_NAME
    params = OverlapParams(HOP_S)
    clip_id = catalog.tracks[real_clips[0].path].track_id

    with catalog.open() as store:
        counting = _CountingSearches(store)
        assert SharedAudioRecord(cache, "encoder-a", params).update(counting) == {}
        assert counting.searches == 2
    assert main(["ingest", "-q", "-c", str(catalog.config_path), str(medley)]) == 0
    with catalog.open() as store:
        counting = _CountingSearches(store)
        restarted = SharedAudioRecord(cache, "encoder-a", params)
        spans = restarted.update(counting)
        assert counting.searches == 1, "only the medley is new"
        medley_id = next(t.track_id for t in store.tracks() if t.source_path == str(medley))
        (clip_span,) = spans[clip_id]
        (medley_span,) = spans[medley_id]
        assert (clip_span.other_id, medley_span.other_id) == (medley_id, clip_id)
        # The clip sits 10 s into the medley, seen from either side.
        assert clip_span.other_start_s - clip_span.start_s == pytest.approx(10.0, abs=HOP_S)
        assert medley_span.other_start_s - medley_span.start_s == pytest.approx(-10.0, abs=HOP_S)

        counting.searches = 0
        assert SharedAudioRecord(cache, "encoder-a", params).update(counting) == spans
        assert counting.searches == 0, "a restart reads the cache"
        assert SharedAudioRecord(cache, "encoder-b", params).update(counting) == spans
        assert counting.searches == 3, "another encoder's cache is searched again"
    assert config.data_dir == tmp_path / "data"
    assert main(["catalog", "remove", "-c", str(catalog.config_path), str(medley_id)]) == 0
    with catalog.open() as store:
        assert SharedAudioRecord(cache, "encoder-b", params).update(store) == {}


def test_an_unreadable_shared_audio_cache_is_searched_again(real_clips: list[Clip], tmp_path: Path) -> None:
    catalog = build_catalog(tmp_path / "data", [real_clips[0].path])
    cache = tmp_path / "data" / CACHE_NAME
    cache.write_text("{not json", encoding="utf-8")

    with catalog.open() as store:
        counting = _CountingSearches(store)
        assert SharedAudioRecord(cache, "encoder-a", OverlapParams(HOP_S)).update(counting) == {}

    assert counting.searches == 1
    assert json.loads(cache.read_text(encoding="utf-8"))["encoder_id"] == "encoder-a"


def test_the_shared_audio_search_hands_over_each_chunk_and_stops_when_asked(
    real_clips: list[Clip], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large catalog's first search is long: what it found is handed over chunk by chunk, and a
    daemon stopping ends it after the track it is on (nothing half-searched is recorded)."""
    monkeypatch.setattr("tunetrace.catalog.shared.SAVE_EVERY_TRACKS", 1)
    catalog = build_catalog(tmp_path / "data", [c.path for c in real_clips])
    published: list[object] = []

    with catalog.open() as store:
        stopped = _CountingSearches(store)
        record = SharedAudioRecord(tmp_path / "stopped.json", "encoder-a", OverlapParams(HOP_S))
        record.stop()
        assert record.update(stopped, published.append) == {}
        assert stopped.searches == 1 and published == []
        assert not (tmp_path / "stopped.json").exists()

        chunked = SharedAudioRecord(tmp_path / "chunked.json", "encoder-a", OverlapParams(HOP_S))
        chunked.update(store, published.append)

    assert published == [{}] * len(real_clips)
