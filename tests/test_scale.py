"""Distractors for catalogs of real size, and the exact in-memory catalog they are checked with."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import Clip, synthetic_music
from tests.fixtures.milvus import BuiltCatalog
from tunetrace.config import load_config
from tunetrace.encoders import create_encoder
from tunetrace.evaluation.distractors import DURATION_RANGE_S, KINDS, SourceTrack, make_distractor
from tunetrace.evaluation.scale import (
    CHUNK,
    CachedDistractor,
    ExactCatalog,
    IndexSpec,
    _right_places,
    agreement,
    distractor_track,
    exact_neighbours,
    query_vectors,
    right_place_recall,
)
from tunetrace.store import Track
from tunetrace.store.memory import MemoryCatalog

RATE = 8000


@pytest.fixture(scope="module")
def pool() -> list[SourceTrack]:
    return [SourceTrack(f"src{i}", synthetic_music(30.0, RATE, seed=i)) for i in range(4)]


def test_a_distractor_is_the_same_audio_every_time_and_differs_by_index(pool: list[SourceTrack]) -> None:
    first = make_distractor(7, pool, RATE, seed=3)
    again = make_distractor(7, pool, RATE, seed=3)
    other = make_distractor(8, pool, RATE, seed=3)
    assert np.array_equal(first.audio, again.audio) and first.kind == again.kind
    assert first.audio.size != other.audio.size or not np.array_equal(first.audio, other.audio)


def test_distractors_have_broadcast_lengths_levels_and_name_their_sources(pool: list[SourceTrack]) -> None:
    made = [make_distractor(i, pool, RATE, seed=1) for i in range(12)]
    names = {s.name for s in pool}
    assert {d.kind for d in made} == set(KINDS)
    for d in made:
        assert DURATION_RANGE_S[0] * RATE <= d.audio.size <= DURATION_RANGE_S[1] * RATE + 1
        assert float(np.max(np.abs(d.audio))) == pytest.approx(0.9, abs=1e-3)
        assert d.sources and set(d.sources) <= names


def test_no_distractor_contains_its_source_audio_unchanged(pool: list[SourceTrack]) -> None:
    """Every piece is pitch-shifted: no 1 s stretch of a source appears sample for sample."""
    for index in range(6):
        d = make_distractor(index, pool, RATE, seed=2)
        probe = d.audio[RATE : 2 * RATE]
        for source in pool:
            corr = np.correlate(source.audio, probe / np.linalg.norm(probe), mode="valid")
            norms = np.sqrt(np.convolve(source.audio**2, np.ones(probe.size), mode="valid"))
            assert float(np.max(corr / np.maximum(norms, 1e-9))) < 0.95


def test_the_memory_catalog_returns_the_exact_nearest_windows_best_first() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = MemoryCatalog()
    track = Track(5, "t", "", "", 25.0, "", "h", 50, 0.0)
    catalog.add_track(track, vectors, np.arange(50) * 0.5)
    hits = catalog.search(vectors[[3, 17]], top_k=4)
    assert hits[0][0].offset_s == 1.5 and hits[1][0].offset_s == 8.5
    for window_hits in hits:
        scores = [h.similarity for h in window_hits]
        assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert catalog.get_tracks([5, 6]) == {5: track} and catalog.tracks() == [track]


def test_an_index_spec_reads_type_build_and_search_parameters() -> None:
    spec = IndexSpec.parse("HNSW:M=16,efConstruction=200:ef=64")
    assert (spec.type, spec.build, spec.search) == ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 64})
    assert IndexSpec.parse("DISKANN::search_list=100").search == {"search_list": 100}
    assert IndexSpec.parse("FLAT") == IndexSpec("FLAT", {}, {})
    with pytest.raises(SystemExit, match="TYPE"):
        IndexSpec.parse("HNSW:a:b:c")


def test_the_exact_reference_over_blocks_equals_the_memory_catalogs_answer() -> None:
    """The recall reference streams the cache in blocks; merged, it must be the exact top-k."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((900, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    track_ids, offsets = np.arange(900) // 100, (np.arange(900) % 100) * 0.5
    queries = vectors[[5, 250, 899]] + 0.05 * rng.standard_normal((3, 16)).astype(np.float32)
    bounds = ((0, 300), (300, 301), (301, 900))
    blocks = iter([(vectors[a:b], track_ids[a:b], offsets[a:b]) for a, b in bounds])
    found = exact_neighbours(queries, blocks, top_k=5)
    catalog = MemoryCatalog()
    for t in range(9):
        rows = track_ids == t
        track = Track(t, f"t{t}", "", "", 50.0, "", f"h{t}", 100, 0.0)
        catalog.add_track(track, vectors[rows], offsets[rows])
    expected = [{(h.track_id, round(h.offset_s, 2)) for h in hits} for hits in catalog.search(queries, 5)]
    assert found == expected


class _StoreWithVectors(MemoryCatalog):
    """What ``ExactCatalog.from_cache`` reads from a store: its tracks and each track's vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add_track(self, track: Track, embeddings: np.ndarray, offsets_s: np.ndarray) -> None:
        super().add_track(track, embeddings, offsets_s)
        self.vectors[track.track_id] = (embeddings, offsets_s)

    def track_vectors(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        return self.vectors[track_id]


def _write_chunk(path: Path, items: list[tuple[int, np.ndarray]]) -> None:
    """One cache chunk in the format ``build_vectors`` writes (float16 vectors, float32 offsets)."""
    meta = [asdict(CachedDistractor(i, "shifted", ("src0",), v.shape[0] * 0.5, v.shape[0])) for i, v in items]
    np.savez(
        path, vectors=np.concatenate([v for _, v in items]).astype(np.float16),
        offsets_s=np.concatenate([np.arange(v.shape[0]) * 0.5 for _, v in items]).astype(np.float32),
        index=np.concatenate([np.full(v.shape[0], i, np.int32) for i, v in items]),
        meta=np.array(json.dumps(meta)),
    )


def test_the_exact_catalog_answers_like_the_memory_catalog_over_cache_and_real_tracks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real tracks read from the store plus cached distractors, scored in blocks smaller than the
    catalog: every answer is the exact top k, best first, with the right track and offset."""
    rng = np.random.default_rng(4)

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, 16)).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)

    distractors = [(i, unit(40 + 7 * i)) for i in range(CHUNK + 3)]  # two chunks, the second partial
    _write_chunk(tmp_path / "chunk-00000.npz", distractors[:CHUNK])
    _write_chunk(tmp_path / "chunk-00001.npz", distractors[CHUNK:])
    store = _StoreWithVectors()
    reference = MemoryCatalog()
    for t in range(3):
        track = Track(1000 + t, f"real{t}", "", "", 30.0, "", f"real-{t}", 60, 0.0)
        vectors, offsets = unit(60), np.arange(60) * 0.5
        store.add_track(track, vectors, offsets)
        reference.add_track(track, vectors, offsets)
    count = CHUNK + 2  # the last cached distractor is left out
    for i, vectors in distractors[:count]:
        track = distractor_track(CachedDistractor(i, "shifted", ("src0",), 0.0, vectors.shape[0]), seed=9)
        reference.add_track(track, vectors, np.arange(vectors.shape[0]) * 0.5)
    monkeypatch.setattr(ExactCatalog, "BLOCK_ROWS", 333)
    exact = ExactCatalog.from_cache(store, tmp_path, count, seed=9)
    assert exact.vector_count() == 180 + sum(v.shape[0] for _, v in distractors[:count])
    queries = np.concatenate([unit(5), distractors[7][1][:3] + 0.01, store.vectors[1001][0][:2]])
    for got, want in zip(exact.search(queries, 10), reference.search(queries, 10), strict=True):
        assert [(h.track_id, h.offset_s) for h in got] == [(h.track_id, h.offset_s) for h in want]
        assert [h.similarity for h in got] == pytest.approx([h.similarity for h in want], abs=1e-5)
    assert exact.get_tracks([1002])[1002].title == "real2" and len(exact.tracks()) == 3 + count
    made = distractor_track(CachedDistractor(CHUNK + 1, "shifted", ("src0",), 0.0, 0), seed=9)
    assert exact.get_tracks([made.track_id])[made.track_id].content_hash == made.content_hash


def _results_csv(path: Path, rows: list[tuple[int, str, str, int]]) -> Path:
    lines = ["query_id,set,condition,right_offset"] + [f"{q},{s},{c},{r}" for q, s, c, r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_agreement_is_the_share_of_exact_hits_the_index_keeps(tmp_path: Path) -> None:
    exact = _results_csv(tmp_path / "exact.csv", [
        (0, "catalog", "clean", 1), (1, "catalog", "clean", 1), (2, "catalog", "music_5db", 1),
        (3, "catalog", "music_5db", 0), (4, "holdout", "clean", 0),
    ])
    index = _results_csv(tmp_path / "index.csv", [
        (0, "catalog", "clean", 1), (1, "catalog", "clean", 1), (2, "catalog", "music_5db", 0),
        (3, "catalog", "music_5db", 1), (4, "holdout", "clean", 0),
    ])
    found = agreement(exact, index)
    assert (found.exact_hits, found.kept, found.index_only_hits) == (3, 2, 1)
    assert found.recall == pytest.approx(2 / 3)
    assert found.by_condition == {"clean": (2, 2), "music_5db": (1, 0)}
    partial = _results_csv(tmp_path / "partial.csv", [(0, "catalog", "clean", 1)])
    with pytest.raises(SystemExit, match="same --excerpts"):
        agreement(exact, partial)


def test_exact_eval_answers_the_catalog_excerpts_as_exact_search_does(tmp_path: Path) -> None:
    """On an exact (FLAT) Lite catalog of real tracks and cached distractors, ``exact-eval`` must
    give every catalog excerpt the answer ``tunetrace eval`` gives, and ``agree`` then reports a
    right-track recall of 1; hold-out excerpts are not answered (exact search at size is costly)."""
    from tests.fixtures.audio import write_wav
    from tunetrace.cli import main as cli_main
    from tunetrace.evaluation.scale import main as scale_main

    catalog, holdout, cache = tmp_path / "catalog", tmp_path / "holdout", tmp_path / "cache"
    for folder in (catalog, holdout, cache):
        folder.mkdir()
    for i in range(3):
        write_wav(catalog / f"song{i}.wav", synthetic_music(25.0, RATE, seed=300 + i), RATE)
        write_wav(holdout / f"other{i}.wav", synthetic_music(20.0, RATE, seed=400 + i), RATE)
    rng = np.random.default_rng(5)
    distractors = []
    for i in range(2):
        v = rng.standard_normal((80, 128)).astype(np.float32)
        distractors.append((i, (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)))
    _write_chunk(cache / "chunk-00000.npz", [(i, v.astype(np.float32)) for i, v in distractors])
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nlog_level: WARNING\n", encoding="utf-8")
    plan = ["--excerpts", "3", "--lengths", "5", "--conditions", "clean,noise_10db"]
    assert scale_main(["insert", "--cache", str(cache), "--count", "2", "-c", str(config)]) == 0
    assert cli_main(["eval", "-c", str(config), "--catalog", str(catalog), "--holdout", str(holdout),
                     *plan, "--seed", "1", "--out", str(tmp_path / "flat"), "--quiet"]) == 0
    assert scale_main(["exact-eval", "-c", str(config), "--cache", str(cache), "--count", "2",
                       "--catalog", str(catalog), "--holdout", str(holdout), *plan, "--eval-seed", "1",
                       "--out", str(tmp_path / "exact")]) == 0

    def answers(path: Path) -> dict[str, tuple[str, str]]:
        import csv

        with path.open(newline="") as handle:
            return {r["query_id"]: (r["set"], r["answer_track_id"]) for r in csv.DictReader(handle)}

    flat, exact = answers(tmp_path / "flat" / "results.csv"), answers(tmp_path / "exact" / "results.csv")
    assert {q for q, (s, _) in flat.items() if s == "catalog"} == set(exact) and len(exact) == 6
    assert all(exact[q] == flat[q] for q in exact)
    found = agreement(tmp_path / "exact" / "results.csv", tmp_path / "flat" / "results.csv")
    assert found.exact_hits >= 4 and found.recall == 1.0


def test_right_place_recall_counts_only_queries_exact_search_places_right() -> None:
    truth = [
        {(7, 10.0), (3, 99.0)},   # exact holds the right place: kept by the index
        {(7, 20.5), (4, 1.0)},    # exact holds it (within the tolerance): the index lost it
        {(5, 30.0)},              # exact misses it: not counted either way
        {(7, 40.0)},              # origin unknown: not counted
    ]
    found = [
        [(3, 99.0), (7, 10.5)],
        [(7, 21.5), (4, 1.0)],    # the right track, but a second away: not the right place
        [(7, 30.0)],
        [(7, 40.0)],
    ]
    answers = [(7, 10.2), (7, 20.2), (7, 30.0), None]
    recall, exact_right = right_place_recall(found, truth, answers, tolerance_s=0.5)
    assert exact_right == 2
    assert recall == 0.5


def test_right_place_recall_is_undefined_when_exact_search_never_places_a_query() -> None:
    assert right_place_recall([[(1, 0.0)]], [{(2, 0.0)}], [(1, 0.0)], tolerance_s=0.5) == (None, 0)


def test_query_windows_are_placed_where_they_were_cut_and_exact_search_finds_them_there(
    clip_catalog: BuiltCatalog, real_clips: list[Clip],
) -> None:
    config = load_config(clip_catalog.config_path)
    encoder = create_encoder(config.encoder, config.data_dir)
    queries, origins = query_vectors([c.path for c in real_clips], encoder, 8, seed=3)
    places = _right_places(config, encoder, origins)
    assert [p[0] if p else None for p in places] == [clip_catalog.tracks[o.path].track_id for o in origins]

    clean = queries[::2]  # every other query has white noise at 10 dB
    with clip_catalog.open() as store:
        exact = [{(h.track_id, h.offset_s) for h in row} for row in store.search(clean, 10)]
    share, placed = right_place_recall(
        [sorted(row) for row in exact], exact, places[::2], encoder.info.window_spec.hop_s,
    )
    assert (share, placed) == (1.0, 4), "each clean window's nearest catalog windows hold where it was cut"
