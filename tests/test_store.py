"""The catalog store's contract, against Milvus Lite and (marked ``milvus_server``) the real server.

Every test runs on both back ends through the ``backend`` fixture, so Lite-only behaviour (its
hits keyed by the primary key's name, FLAT index) and server-only behaviour (HNSW, consistency)
cannot drift apart unnoticed.  Vectors here are random unit vectors: the store must return exactly
what was put in, whatever an encoder would make.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import tunetrace.store.milvus as store_module
from tests.fixtures.milvus import MilvusServer, unique_prefix
from tunetrace.config import MilvusConfig
from tunetrace.encoders.base import EncoderInfo
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.errors import CatalogError, CatalogMismatchError
from tunetrace.store import Track, TrackSpan, track_id_for
from tunetrace.store.milvus import CatalogStore

INFO = SpectralEncoder().info


@dataclass(frozen=True)
class Backend:
    uri: str
    config: MilvusConfig

    def open(self, *, create: bool, info: EncoderInfo = INFO) -> CatalogStore:
        return CatalogStore.open(self.config, self.uri, info, create=create)

    def sibling(self, hint: str) -> Backend:
        """Another catalog in the same database (creating one on a server costs ~10 s: share them)."""
        return Backend(self.uri, MilvusConfig(collection_prefix=unique_prefix(hint), timeout_s=60))


@pytest.fixture(scope="module", params=["lite", pytest.param("server", marks=pytest.mark.milvus_server)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """One database per back end for this module; tests get their own catalogs (prefixes) in it."""
    config = MilvusConfig(collection_prefix=unique_prefix("shared"), timeout_s=60)
    if request.param == "server":
        server: MilvusServer = request.getfixturevalue("milvus_server")
        return Backend(server.uri, config)
    return Backend(str(tmp_path_factory.mktemp("lite") / "catalog.db"), config)


@pytest.fixture
def backend(database: Backend, request: pytest.FixtureRequest) -> Backend:
    """A catalog no other test has touched (not created yet)."""
    return database.sibling(request.node.name)


@pytest.fixture
def store(database: Backend) -> Iterator[CatalogStore]:
    """The module's shared catalog: tests add tracks of their own and compare counts before/after."""
    with database.open(create=True) as opened:
        yield opened


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, INFO.dimension)).astype(np.float32)
    normalised: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalised


def make_track(name: str, n_vectors: int, artist: str = "") -> Track:
    digest = f"hash-of-{name}"
    return Track(
        track_id=track_id_for(digest), title=name, artist=artist, album="", duration_s=n_vectors * INFO.hop_s,
        source_path=f"/music/{name}.flac", content_hash=digest, n_vectors=n_vectors, ingested_at=1.7e9,
    )


def add(store: CatalogStore, track: Track, vectors: np.ndarray) -> None:
    offsets_s = np.arange(vectors.shape[0]) * INFO.hop_s
    store.add_track(track, vectors, offsets_s)


def test_a_new_catalog_is_empty_and_reopens(backend: Backend) -> None:
    with backend.open(create=True) as store:
        assert store.tracks() == []
        assert store.vector_count() == 0
    with backend.open(create=False) as reopened:
        assert reopened.info == INFO
        assert reopened.tracks() == []


def test_opening_a_missing_catalog_without_create_says_to_ingest(backend: Backend) -> None:
    with pytest.raises(CatalogError, match=r"run `tunetrace ingest PATH\.\.\.` first"):
        backend.open(create=False)


MISMATCHES: list[dict[str, object]] = [
    {"encoder_id": "fingerprint-0123abcd", "dimension": 64},
    {"hop_s": 0.25},
    {"metric": "L2"},
]


def test_a_catalog_built_with_another_encoder_is_refused_with_what_to_do(backend: Backend) -> None:
    with backend.open(create=True) as store:
        add(store, make_track("a", 4), unit_vectors(4, 1))
    for change in MISMATCHES:
        other = dataclasses.replace(INFO, **change)  # type: ignore[arg-type]
        with pytest.raises(CatalogMismatchError) as raised:
            backend.open(create=False, info=other)
        message = str(raised.value)
        assert f"built with encoder {INFO.encoder_id!r}" in message
        for key, value in change.items():
            assert f"{key}: catalog has {getattr(INFO, key)!r}, encoder gives {value!r}" in message
        assert "set encoder.name back" in message
        assert "re-ingest with `tunetrace ingest`" in message
        # create=True must not paper over the mismatch either.
        with pytest.raises(CatalogMismatchError):
            backend.open(create=True, info=other)
    # Refusing must not damage the catalog: the right encoder still opens it.
    with backend.open(create=False) as reopened:
        assert [t.title for t in reopened.tracks()] == ["a"]


@pytest.mark.parametrize("layout", [1, 2])
def test_a_catalog_of_an_older_layout_is_refused_with_what_to_do(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, layout: int,
) -> None:
    """Layout 2 identified tracks by the file's bytes (tags included): its ids cannot carry over."""
    backend = backend.sibling(f"layout{layout}")
    with monkeypatch.context() as older:
        older.setattr(store_module, "SCHEMA_VERSION", layout)
        with backend.open(create=True) as store:
            add(store, make_track("a", 4), unit_vectors(4, 1))
    for create in (False, True):
        with pytest.raises(CatalogMismatchError) as raised:
            backend.open(create=create)
        message = str(raised.value)
        assert f"catalog layout {layout}" in message and f"reads {store_module.SCHEMA_VERSION}" in message
        assert "re-tagging a file updates its track" in message
        assert "re-ingest with `tunetrace ingest`" in message


def test_isrc_is_stored_and_a_re_tagged_track_is_rewritten_in_place(store: CatalogStore) -> None:
    track = replace(make_track("isrc-song", 3), isrc="GBAYE0601498")
    add(store, track, unit_vectors(3, 11))
    assert store.get_tracks([track.track_id])[track.track_id].isrc == "GBAYE0601498"
    vectors = store.vector_count()
    store.update_track(replace(track, title="isrc-song (remaster)", isrc="GBAYE0601499"))
    stored = store.get_tracks([track.track_id])[track.track_id]
    assert (stored.title, stored.isrc, stored.n_vectors) == ("isrc-song (remaster)", "GBAYE0601499", 3)
    assert store.vector_count() == vectors


def test_track_ids_are_stable_distinct_and_exact_in_javascript() -> None:
    hashes = [f"sha256-of-recording-{i}" for i in range(5000)]
    ids = [track_id_for(h) for h in hashes]
    assert all(0 <= i < 2**53 for i in ids), "JSON numbers above 2**53 are rounded by JavaScript"
    assert len(set(ids)) == len(ids)
    assert ids == [track_id_for(h) for h in hashes]
    assert max(ids) > 2**50, "the whole range is used (collisions stay rare)"


def test_each_vector_finds_its_own_track_and_offset(store: CatalogStore) -> None:
    first, second = make_track("first", 40), make_track("second", 30)
    first_vectors, second_vectors = unit_vectors(40, 101), unit_vectors(30, 102)
    add(store, first, first_vectors)
    add(store, second, second_vectors)

    queries = np.vstack([first_vectors[[0, 17, 39]], second_vectors[[5]]])
    results = store.search(queries, top_k=3)

    assert len(results) == 4
    expected = [(first, 0.0), (first, 8.5), (first, 19.5), (second, 2.5)]
    for index, (hits, (track, offset_s)) in enumerate(zip(results, expected, strict=True)):
        assert len(hits) == 3
        assert {h.query_index for h in hits} == {index}
        assert hits[0].track_id == track.track_id
        assert hits[0].offset_s == pytest.approx(offset_s)
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
        similarities = [h.similarity for h in hits]
        assert similarities == sorted(similarities, reverse=True)
        assert hits[1].similarity < 0.6  # random 128-d unit vectors are nearly orthogonal


def test_references_return_each_spans_stored_windows_in_one_request(store: CatalogStore) -> None:
    first, second = make_track("spanned", 40), make_track("spanned-too", 30)
    first_vectors, second_vectors = unit_vectors(40, 111), unit_vectors(30, 112)
    add(store, first, first_vectors)
    add(store, second, second_vectors)
    hop = INFO.hop_s
    spans = [
        TrackSpan(first.track_id, 10 * hop - 0.01, 14 * hop + 0.01),
        TrackSpan(second.track_id, -1.0, 2 * hop + 0.01),  # before the track starts: clipped
        TrackSpan(first.track_id, 39 * hop - 0.01, 60 * hop),  # past its end: clipped
        TrackSpan(track_id_for("never-ingested"), 0.0, 10.0),
    ]

    found = store.references(spans)

    assert [r.offsets_s.tolist() for r in found] == [
        [i * hop for i in range(10, 15)], [0.0, hop, 2 * hop], [39 * hop], [],
    ]
    np.testing.assert_allclose(found[0].vectors, first_vectors[10:15], atol=1e-6)
    np.testing.assert_allclose(found[1].vectors, second_vectors[:3], atol=1e-6)
    assert found[3].vectors.shape == (0, INFO.dimension)


def test_search_batches_beyond_one_request(store: CatalogStore) -> None:
    track = make_track("long", 600)
    vectors = unit_vectors(600, 103)
    add(store, track, vectors)
    results = store.search(vectors, top_k=1)
    assert len(results) == 600
    assert [r[0].query_index for r in results] == list(range(600))
    assert {r[0].track_id for r in results} == {track.track_id}
    found_offsets = np.array([r[0].offset_s for r in results])
    assert np.allclose(found_offsets, np.arange(600) * INFO.hop_s)


def test_track_rows_round_trip_and_list_in_title_order(store: CatalogStore) -> None:
    tracks = [make_track("Zebra", 3, "Z"), make_track("alpha", 2, "A"), make_track("Mango", 5)]
    for seed, track in enumerate(tracks, start=104):
        add(store, track, unit_vectors(track.n_vectors, seed))

    ours = {t.track_id for t in tracks}
    assert [t.title for t in store.tracks() if t.track_id in ours] == ["alpha", "Mango", "Zebra"]
    by_id = store.get_tracks([t.track_id for t in tracks] + [12345])
    assert set(by_id) == ours
    for track in tracks:
        assert by_id[track.track_id] == track
    assert store.find_by_hash("hash-of-Mango") == tracks[2]
    assert store.find_by_hash("hash-of-nothing") is None
    assert store.get_tracks([]) == {}


def test_adding_a_track_again_replaces_its_vectors(store: CatalogStore) -> None:
    before = store.vector_count()
    track = make_track("again", 20)
    add(store, track, unit_vectors(20, 107))
    add(store, dataclasses.replace(track, artist="second take"), unit_vectors(20, 108))
    assert store.vector_count() == before + 20
    assert store.get_tracks([track.track_id])[track.track_id].artist == "second take"
    old = store.search(unit_vectors(20, 107), top_k=5)
    assert track.track_id not in {h.track_id for window in old for h in window if h.similarity > 0.99}
    new = store.search(unit_vectors(20, 108)[:1], top_k=1)[0]
    assert new[0].track_id == track.track_id
    assert new[0].similarity == pytest.approx(1.0, abs=1e-4)


def test_removing_a_track_deletes_its_row_and_vectors(store: CatalogStore) -> None:
    before = store.vector_count()
    keep, drop = make_track("keep", 10), make_track("drop", 12)
    add(store, keep, unit_vectors(10, 109))
    add(store, drop, unit_vectors(12, 110))
    assert store.vector_count() == before + 22

    assert store.remove_track(drop.track_id) is True
    assert store.remove_track(drop.track_id) is False
    assert store.get_tracks([keep.track_id, drop.track_id]).keys() == {keep.track_id}
    assert store.vector_count() == before + 10
    hits = store.search(unit_vectors(12, 110), top_k=10)
    assert drop.track_id not in {h.track_id for window in hits for h in window}


def test_embeddings_of_the_wrong_shape_are_rejected(store: CatalogStore) -> None:
    track = make_track("bad", 3)
    with pytest.raises(ValueError, match=r"shape \(n, 128\)"):
        store.add_track(track, np.zeros((3, 64), np.float32), np.arange(3.0))
    with pytest.raises(ValueError, match="one offset per embedding"):
        store.add_track(track, unit_vectors(3, 111), np.arange(2.0))
    assert store.get_tracks([track.track_id]) == {}


def test_catalogs_with_different_prefixes_are_independent(backend: Backend, store: CatalogStore) -> None:
    add(store, make_track("only-in-shared", 5), unit_vectors(5, 112))
    with backend.open(create=True) as fresh:
        assert fresh.tracks() == []
        assert fresh.vector_count() == 0
        add(fresh, make_track("only-in-fresh", 3), unit_vectors(3, 113))
        assert [t.title for t in fresh.tracks()] == ["only-in-fresh"]
    assert "only-in-fresh" not in {t.title for t in store.tracks()}


def test_long_text_fields_are_clipped_not_refused(store: CatalogStore) -> None:
    track = dataclasses.replace(make_track("x", 2), title="é" * 2000)
    add(store, track, unit_vectors(2, 114))
    stored = store.get_tracks([track.track_id])[track.track_id]
    assert stored.title == "é" * 511  # 1023 bytes of UTF-8, cut at a character boundary


class _RecordingClient:
    """The real client, noting which requests went out without a timeout."""

    def __init__(self, client: object) -> None:
        self._client = client
        self.without_timeout: list[str] = []

    def __getattr__(self, name: str) -> object:
        method = getattr(self._client, name)
        if name in {"create_schema", "prepare_index_params", "close"}:  # local, no request
            return method

        def call(*args: object, **kwargs: object) -> object:
            if kwargs.get("timeout") is None:
                self.without_timeout.append(name)
            return method(*args, **kwargs)

        return call


def test_opening_a_catalog_never_waits_without_a_timeout(tmp_path: Path) -> None:
    """A server that accepts the connection and then hangs must fail startup, not block it."""
    from pymilvus import MilvusClient

    real = MilvusClient(uri=str(tmp_path / "catalog.db"))  # type: ignore[operator]
    recording = _RecordingClient(real)
    store = CatalogStore(recording, "t", INFO, is_lite=True, timeout_s=7.0)  # type: ignore[arg-type]
    try:
        store._check_or_create(create=True)  # creates the collections
        store._check_or_create(create=False)  # and reopens them
    finally:
        real.close()
    assert recording.without_timeout == []


class _FailingClient:
    def __getattr__(self, name: str) -> object:
        def fail(*args: object, **kwargs: object) -> object:
            from pymilvus.exceptions import MilvusException

            raise MilvusException(code=2, message="server is restarting")

        return fail


def test_a_failing_request_while_opening_is_a_catalog_error_that_says_why() -> None:
    store = CatalogStore(_FailingClient(), "t", INFO, is_lite=False, timeout_s=1.0)  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match="server is restarting"):
        store._check_or_create(create=True)


def test_a_new_catalog_records_its_index_and_reopens_with_it(backend: Backend) -> None:
    expected = "FLAT" if not backend.uri.startswith("http") else "HNSW"
    with backend.open(create=True) as created:
        assert created.index.type == expected
        add(created, make_track("indexed", 20), unit_vectors(20, seed=41))
    with backend.open(create=False) as reopened:
        assert reopened.index.type == expected and reopened.index.shards == 1
        assert reopened.vector_shards() == 1
        hits = reopened.search(unit_vectors(20, seed=41)[:1], top_k=1)
        assert hits[0][0].offset_s == 0.0


def test_lite_refuses_a_server_only_index_or_shards_with_the_key_to_change(tmp_path: Path) -> None:
    from tunetrace.config import parse_config
    from tunetrace.errors import ConfigError

    for milvus in ({"index": {"type": "HNSW"}}, {"shards": 2}):
        with pytest.raises(ConfigError) as raised:
            parse_config({"data_dir": str(tmp_path), "milvus": milvus})
        assert "needs a Milvus server (set milvus.uri)" in str(raised.value)
    with pytest.raises(ConfigError, match=r"milvus.index.type IVF_PQ needs a Milvus server"):
        CatalogStore.open(
            MilvusConfig.model_construct(index=MilvusConfig().index.model_copy(update={"type": "IVF_PQ"})),
            str(tmp_path / "c.db"), INFO, create=True,
        )


def test_an_outgrown_lite_catalog_is_reported_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from tunetrace.cli import main

    config_path = tmp_path / "tunetrace.yaml"
    config_path.write_text(f"data_dir: {tmp_path}\nencoder: {{name: spectral}}\n", encoding="utf-8")
    with CatalogStore.open(MilvusConfig(), str(tmp_path / "catalog.db"), INFO, create=True) as created:
        add(created, make_track("big", 30), unit_vectors(30, seed=43))
        assert created.size_warning(30) is None
    assert main(["catalog", "stats", "--json", "-c", str(config_path)]) == 0
    assert json.loads(capsys.readouterr().out)["warning"] is None

    monkeypatch.setattr(store_module, "LITE_COMFORTABLE_VECTORS", 20)
    assert main(["catalog", "stats", "--json", "-c", str(config_path)]) == 0
    captured = capsys.readouterr()
    warning = json.loads(captured.out)["warning"]
    assert "holds 30 vectors" in warning and "milvus.uri" in warning and "HNSW" in warning
    assert warning in captured.err


def test_hnsw_searches_live_windows_with_a_smaller_default_breadth_than_one_shot_queries() -> None:
    from tunetrace.store.milvus import HNSW_DEFAULT_EF, HNSW_LIVE_DEFAULT_EF, IndexChoice

    hnsw = IndexChoice("HNSW", {"M": 16, "efConstruction": 100})
    assert hnsw.search_params({}, 10) == {"ef": HNSW_DEFAULT_EF}
    assert hnsw.search_params({}, 10, live=True) == {"ef": HNSW_LIVE_DEFAULT_EF}
    assert HNSW_LIVE_DEFAULT_EF < HNSW_DEFAULT_EF
    assert hnsw.search_params({}, 100, live=True) == {"ef": 200}  # never below twice top_k
    assert hnsw.search_params({"ef": 128}, 10, live=True) == {"ef": 128}  # configured wins
