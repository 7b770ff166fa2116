"""The daemon's in-memory copy of a small catalog: the neighbours Milvus finds, following every change."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import Clip
from tests.fixtures.milvus import BuiltCatalog, build_catalog
from tunetrace.audio.decode import decode_file
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.catalog.ingest import ingest
from tunetrace.config import load_config, parse_config
from tunetrace.encoders import create_encoder
from tunetrace.pipeline import open_model
from tunetrace.store.base import Hit, Reference, Track, TrackSpan
from tunetrace.store.milvus import CatalogStore
from tunetrace.store.resident import ResidentCatalog, VectorTable, _largest

ENCODER = create_encoder(parse_config({}).encoder)
INFO = ENCODER.info
TOP_K = 10
UNLIMITED = 10**9


def clip_windows(clip: Clip, from_s: float, to_s: float) -> np.ndarray:
    rate = INFO.sample_rate
    audio = decode_file(clip.path, rate)[round(from_s * rate) : round(to_s * rate)]
    windows, _ = frame(audio, WindowSpec(INFO.sample_rate, INFO.window_s, 0.25))
    return ENCODER.embed(windows)


def assert_same_neighbours(ours: Sequence[Sequence[Hit]], theirs: Sequence[Sequence[Hit]]) -> None:
    assert len(ours) == len(theirs)
    for mine, milvus in zip(ours, theirs, strict=True):
        np.testing.assert_allclose([h.similarity for h in mine], [h.similarity for h in milvus], atol=1e-5)
        # The same windows, in the same order wherever two similarities are not a tie.
        assert {(h.track_id, h.offset_s) for h in mine[:-1]} <= {(h.track_id, h.offset_s) for h in milvus}


def test_a_resident_copy_finds_the_neighbours_milvus_finds(
    clip_catalog: BuiltCatalog, real_clips: list[Clip],
) -> None:
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((20, INFO.dimension)).astype(np.float32)
    unit_noise = noise / np.linalg.norm(noise, axis=1)[:, None]
    queries = np.concatenate([clip_windows(real_clips[1], 5.0, 15.0), unit_noise])
    with clip_catalog.open() as store:
        resident = ResidentCatalog(store, store.tracks(), INFO.dimension, INFO.metric, max_vectors=UNLIMITED)
        assert resident.vectors == sum(t.n_vectors for t in store.tracks())
        assert_same_neighbours(resident.search(queries, TOP_K), store.search(queries, TOP_K))
        wanted = [clip_catalog.tracks[real_clips[1].path].track_id]
        assert resident.get_tracks(wanted) == store.get_tracks(wanted)


def test_the_copy_follows_tracks_added_and_removed(tmp_path: Path, real_clips: list[Clip]) -> None:
    built = build_catalog(tmp_path / "one", [real_clips[0].path])
    config = load_config(built.config_path)
    with CatalogStore.open(config.milvus, config.milvus_uri(), INFO, create=False) as store:
        resident = ResidentCatalog(store, store.tracks(), INFO.dimension, INFO.metric, max_vectors=UNLIMITED)
        second = clip_windows(real_clips[1], 10.0, 14.0)
        assert {h.track_id for hits in resident.search(second, 1) for h in hits} == {
            built.tracks[real_clips[0].path].track_id
        }, "before: only the first clip is there to be found"

        summary = ingest([real_clips[1].path], ENCODER, store, config.ingest)
        added = summary.outcomes[0].track
        assert added is not None
        resident.sync(store.tracks())
        assert {h.track_id for hits in resident.search(second, 1) for h in hits} == {added.track_id}

        store.remove_track(built.tracks[real_clips[0].path].track_id)
        resident.sync(store.tracks())
        assert resident.vectors == added.n_vectors
        first = clip_windows(real_clips[0], 5.0, 9.0)
        found = {h.track_id for hits in resident.search(first, TOP_K) for h in hits}
        assert found == {added.track_id}, "a removed track is never an answer again"


class _Vectors:
    """A ``VectorStore`` of given arrays (for the metric arithmetic alone)."""

    def __init__(self, parts: dict[int, np.ndarray]) -> None:
        self.parts = parts
        self.reads = 0
        self.searches = 0

    def tracks(self) -> list[Track]:
        return [_track(i, len(v)) for i, v in self.parts.items()]

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        return {i: _track(i, len(self.parts[i])) for i in track_ids if i in self.parts}

    def track_vectors(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        self.reads += 1
        vectors = self.parts[track_id]
        return vectors, np.arange(len(vectors)) * 0.5

    def _table(self) -> VectorTable:
        return VectorTable.of([(i, v, np.arange(len(v)) * 0.5) for i, v in self.parts.items()], 4)

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        self.searches += 1
        return self._table().search(vectors, top_k)

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        self.searches += 1
        return self._table().references(spans)


def _track(track_id: int, n_vectors: int) -> Track:
    return Track(track_id, f"t{track_id}", "", "", n_vectors * 0.5, "", f"h{track_id}", n_vectors, 0.0)


@pytest.mark.parametrize("metric", ["IP", "L2"])
def test_similarities_are_what_milvus_reports_for_the_metric(metric: str) -> None:
    rng = np.random.default_rng(1)
    store = _Vectors({1: rng.standard_normal((50, 8)).astype(np.float32),
                      2: rng.standard_normal((30, 8)).astype(np.float32)})
    table = VectorTable.of([(i, *store.track_vectors(i)) for i in (1, 2)], 8)
    query = rng.standard_normal((3, 8)).astype(np.float32)

    hits = table.search(query, 5, metric)

    everything = np.concatenate([store.parts[1], store.parts[2]])
    squared_l2 = np.square(query[:, None, :] - everything[None]).sum(-1)
    expected = query @ everything.T if metric == "IP" else -squared_l2
    for row, found in enumerate(hits):
        np.testing.assert_allclose([h.similarity for h in found], np.sort(expected[row])[::-1][:5], rtol=1e-5)


def test_an_unchanged_track_is_not_read_again() -> None:
    store = _Vectors({1: np.eye(4, dtype=np.float32), 2: np.eye(4, dtype=np.float32)})
    resident = ResidentCatalog(store, store.tracks(), 4, "IP", max_vectors=UNLIMITED)
    assert store.reads == 2
    store.parts[3] = np.eye(4, dtype=np.float32)
    resident.sync(store.tracks())
    assert store.reads == 3
    assert resident.vectors == 12


def test_a_catalog_grown_past_the_limit_is_searched_in_the_store_and_the_copy_freed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _Vectors({1: np.eye(4, dtype=np.float32), 2: np.eye(4, dtype=np.float32)})
    resident = ResidentCatalog(store, store.tracks(), 4, "IP", max_vectors=10)
    query = np.eye(4, dtype=np.float32)[:1]
    resident.search(query, 2)
    assert (resident.vectors, store.searches, store.reads) == (8, 0, 2)

    store.parts[3] = 2 * np.eye(4, dtype=np.float32)  # 12 vectors: over the limit
    with caplog.at_level(logging.INFO, logger="tunetrace.store.resident"):
        resident.sync(store.tracks())
        resident.sync(store.tracks())  # still over: said once
    assert resident.vectors == 0, "the copy is freed"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "resident_max_vectors" in warnings[0].getMessage()
    found = resident.search(query, 3)
    assert found == store._table().search(query, 3) and found[0][0].track_id == 3
    spans = [TrackSpan(3, 0.0, 1.0)]
    assert [list(r.offsets_s) for r in resident.references(spans)] == [[0.0, 0.5, 1.0]]
    assert store.searches == 2, "both answered by the store"
    assert store.reads == 2, "nothing read into memory while over the limit"

    del store.parts[3]  # back under the limit: copied again, from the store
    resident.sync(store.tracks())
    assert (resident.vectors, store.reads) == (8, 4)
    assert {h.track_id for h in resident.search(query, 8)[0]} == {1, 2}, "the removed track is gone"
    assert store.searches == 2, "answered from the copy again"


def test_a_catalog_over_the_limit_at_start_is_copied_once_it_shrinks_under() -> None:
    store = _Vectors({1: np.eye(4, dtype=np.float32), 2: np.eye(4, dtype=np.float32)})
    resident = ResidentCatalog(store, store.tracks(), 4, "IP", max_vectors=6)
    assert (resident.vectors, resident.total_vectors, store.reads) == (0, 8, 0)
    del store.parts[2]
    resident.sync(store.tracks())
    assert (resident.vectors, store.reads) == (4, 1)


def test_a_lite_catalog_grown_past_the_limit_by_an_ingest_is_searched_by_milvus_lite(
    tmp_path: Path, real_clips: list[Clip],
) -> None:
    built = build_catalog(tmp_path / "one", [real_clips[0].path])
    config = load_config(built.config_path)
    with CatalogStore.open(config.milvus, config.milvus_uri(), INFO, create=False) as store:
        first = store.tracks()
        resident = ResidentCatalog(store, first, INFO.dimension, INFO.metric, max_vectors=first[0].n_vectors)
        assert resident.vectors == first[0].n_vectors

        summary = ingest([real_clips[1].path], ENCODER, store, config.ingest)
        added = summary.outcomes[0].track
        assert added is not None
        resident.sync(store.tracks())
        assert resident.vectors == 0
        second = clip_windows(real_clips[1], 10.0, 14.0)
        assert_same_neighbours(resident.search(second, TOP_K), store.search(second, TOP_K))
        assert {h.track_id for hits in resident.search(second, 1) for h in hits} == {added.track_id}


@pytest.mark.parametrize("n", [5, 100, 64 * 21, 64 * 40 + 17])
def test_the_two_step_selection_keeps_exactly_the_k_largest(n: int) -> None:
    scores = np.random.default_rng(n).standard_normal((7, n)).astype(np.float32)
    k = min(10, n)
    chosen = _largest(scores, k)
    for row in range(scores.shape[0]):
        assert sorted(scores[row, chosen[row]]) == sorted(np.sort(scores[row])[-k:])


@pytest.mark.parametrize(("limit", "copied"), [(0, None), (1, False), (UNLIMITED, True)])
def test_the_daemon_copies_a_lite_catalog_by_the_configured_limit(
    tmp_path: Path, real_clips: list[Clip], limit: int, copied: bool | None,
) -> None:
    built = build_catalog(tmp_path / "one", [real_clips[0].path])
    config = load_config(built.config_path)
    milvus = config.milvus.model_copy(update={"resident_max_vectors": limit})
    config = config.model_copy(update={"milvus": milvus})
    model, store = open_model(config, resident=True)
    with store:
        if copied is None:
            assert model.catalog is store, "0: never a copy"
            return
        assert isinstance(model.catalog, ResidentCatalog)
        assert model.catalog.vectors == (model.shape.total_vectors if copied else 0)
