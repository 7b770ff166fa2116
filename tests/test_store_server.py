"""What only a Milvus *server* brings: sharing one catalog between processes, and being unreachable.

The store's contract itself runs on the server too (``tests/test_store.py``, ``server`` params);
here the whole path goes through the server: real clips ingested by ``tunetrace ingest`` and
identified by ``tunetrace identify`` in separate client connections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.audio import Clip, cut_clip
from tests.fixtures.milvus import MilvusServer, unique_prefix, write_config
from tunetrace.cli import main
from tunetrace.config import MilvusConfig, load_config
from tunetrace.encoders import create_encoder
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.errors import CatalogError
from tunetrace.identify import Recognizer
from tunetrace.store.milvus import CatalogStore

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_an_unreachable_server_is_reported_with_its_address_and_the_key_to_check() -> None:
    config = MilvusConfig(timeout_s=2)
    with pytest.raises(CatalogError) as raised:
        CatalogStore.open(config, "http://127.0.0.1:9", SpectralEncoder().info, create=False)
    message = str(raised.value)
    assert "cannot connect to Milvus at http://127.0.0.1:9" in message
    assert "Check milvus.uri" in message


def test_the_cli_reports_an_unreachable_server_with_exit_69(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path, uri="http://127.0.0.1:9", milvus={"timeout_s": "2"})
    wav = tmp_path / "q.wav"
    wav.write_bytes(b"")
    assert main(["identify", "-c", str(config_path), str(wav)]) == 69
    assert "catalog error: cannot connect to Milvus at http://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.milvus_server
def test_clips_ingested_by_one_client_are_identified_by_another(
    milvus_server: MilvusServer, real_clips: list[Clip], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = unique_prefix("cli")
    config_path = write_config(tmp_path, uri=milvus_server.uri, prefix=prefix)

    assert main(["ingest", "-q", "-c", str(config_path), *(str(c.path) for c in real_clips)]) == 0
    assert "added 3, skipped 0" in capsys.readouterr().out

    clip = real_clips[1]
    excerpt = cut_clip(clip.path, tmp_path / "excerpt.wav", 12.0, 10.0)
    assert main(["identify", "--json", "-c", str(config_path), str(excerpt.path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["match"] is True
    assert record["title"] == clip.path.stem
    assert record["offset_s"] == pytest.approx(12.0, abs=0.5)

    # A second ingest from a fresh client sees what the first one wrote: nothing is re-added.
    assert main(["ingest", "-q", "-c", str(config_path), *(str(c.path) for c in real_clips)]) == 0
    assert "added 0, skipped 3" in capsys.readouterr().out


@pytest.mark.milvus_server
def test_a_track_added_by_another_client_is_seen_after_refresh(
    milvus_server: MilvusServer, synthetic_wavs: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = unique_prefix("share")
    config_path = write_config(tmp_path, uri=milvus_server.uri, prefix=prefix)
    assert main(["ingest", "-q", "-c", str(config_path), str(synthetic_wavs[0])]) == 0
    config = load_config(config_path)
    encoder = create_encoder(config.encoder)  # the one the ingest command used
    with CatalogStore.open(config.milvus, config.milvus_uri(), encoder.info, create=False) as daemon_side:
        recognizer = Recognizer(encoder, daemon_side, config.matcher)
        assert len(recognizer.shape.track_vectors) == 1

        assert main(["ingest", "-q", "-c", str(config_path), str(synthetic_wavs[1])]) == 0
        assert "added 1" in capsys.readouterr().out
        recognizer.refresh()
        assert len(recognizer.shape.track_vectors) == 2
        assert sorted(t.title for t in daemon_side.tracks()) == ["melody-1", "melody-2"]


@pytest.mark.milvus_server
def test_the_configured_index_and_shards_are_built_recorded_and_searched_with(
    milvus_server: MilvusServer, synthetic_wavs: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = unique_prefix("ivf")
    config_path = write_config(tmp_path, uri=milvus_server.uri, prefix=prefix)
    with config_path.open("a", encoding="utf-8") as handle:
        handle.write("  shards: 2\n  index: {type: IVF_FLAT, build: {nlist: 8}, search: {nprobe: 8}}\n")
    files = [str(w) for w in synthetic_wavs]
    assert main(["ingest", "-q", "-c", str(config_path), *files]) == 0
    capsys.readouterr()
    assert main(["catalog", "stats", "--json", "-c", str(config_path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["index"], stats["index_build"], stats["shards"]) == ("IVF_FLAT", {"nlist": 8}, 2)
    config = load_config(config_path)
    encoder = create_encoder(config.encoder)
    with CatalogStore.open(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
        assert store.vector_shards() == 2
        recognizer = Recognizer(encoder, store, config.matcher)
        from tunetrace.audio.decode import decode_file

        audio = decode_file(synthetic_wavs[1], encoder.info.sample_rate)
        result = recognizer.identify(audio[4 * encoder.info.sample_rate : 10 * encoder.info.sample_rate])
        assert result.track is not None and result.track.title == "melody-2"
        vectors = encoder.embed(audio[None, : round(encoder.info.window_s * encoder.info.sample_rate)])

    # The daemon's store searches with milvus.index.live_search (else search), one-shot stores
    # with search.
    index = config.milvus.index.model_copy(update={"live_search": {"nprobe": 2}})
    with_live = config.milvus.model_copy(update={"index": index})
    cases = ((with_live, False, {"nprobe": 8}), (with_live, True, {"nprobe": 2}),
             (config.milvus, True, {"nprobe": 8}))
    for milvus, live, expected in cases:
        uri = config.milvus_uri()
        with CatalogStore.open(milvus, uri, encoder.info, create=False, live=live) as store:
            sent: list[object] = []
            search = store._client.search

            def spy(*args: object, search: Any = search, sent: list[object] = sent, **kwargs: Any) -> Any:
                sent.append(kwargs["search_params"]["params"])
                return search(*args, **kwargs)

            monkeypatch.setattr(store._client, "search", spy)
            assert store.search(vectors, 5)[0]
            assert sent == [expected]



@pytest.mark.milvus_server
def test_a_bulk_filled_catalog_changes_its_index_in_place_and_records_it(
    milvus_server: MilvusServer, tmp_path: Path,
) -> None:
    """What the index benchmark relies on: tracks inserted in bulk are complete, their vectors
    read back exactly, and a rebuilt index is recorded and searched with on reopen."""
    import numpy as np

    from tunetrace.store import Track, track_id_for
    from tunetrace.store.milvus import IndexChoice

    config_path = write_config(tmp_path, uri=milvus_server.uri, prefix=unique_prefix("bulk"),
                               milvus={"index": "{type: FLAT}"})
    config = load_config(config_path)
    info = create_encoder(config.encoder).info
    rng = np.random.default_rng(4)
    items = []
    for n in range(3):
        vectors = rng.standard_normal((40, info.dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        track = Track(track_id_for(f"bulk-{n}"), f"bulk-{n}", "", "", 20.0, "", f"bulk-{n}", 40, 0.0)
        items.append((track, vectors, np.arange(40) * 0.5))
    with CatalogStore.open(config.milvus, config.milvus_uri(), info, create=True) as store:
        store.add_new_tracks(items, insert_batch=50)
        assert store.content_hashes() == {"bulk-0", "bulk-1", "bulk-2"}
        assert store.vector_count() == 120
        vectors, offsets = store.track_vectors(items[1][0].track_id)
        order = np.argsort(offsets)
        assert np.allclose(vectors[order], items[1][1], atol=1e-6)
        assert np.allclose(offsets[order], items[1][2])
        built_s = store.rebuild_index(IndexChoice("IVF_FLAT", {"nlist": 4}))
        assert built_s >= 0 and store.index == IndexChoice("IVF_FLAT", {"nlist": 4})
    with CatalogStore.open(config.milvus, config.milvus_uri(), info, create=False) as store:
        assert store.index == IndexChoice("IVF_FLAT", {"nlist": 4})
        hits = store.search(items[2][1][[7]], top_k=3)[0]
        assert (hits[0].track_id, hits[0].offset_s) == (items[2][0].track_id, 3.5)
