"""The catalog in Milvus: the only module that imports pymilvus (and grpc).

Three collections share a prefix:

* ``<prefix>_vectors``: one row per indexed window: ``track_id``, ``offset_s`` and the embedding.
* ``<prefix>_tracks``: one row per recording (title, artist, album, duration, source path, content
  hash, vector count), so every daemon sharing a server sees one catalog; no process-local maps.
* ``<prefix>_meta``: one row describing how the vectors were made (encoder id, dimension, window,
  hop, metric, schema version). Opening a catalog with a different encoder is refused.

A track's vectors are written before its track row, so a track row means "complete": an ingest
interrupted half-way leaves only orphan vectors, which search ignores and re-ingest replaces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from tunetrace.config import (
    IndexConfig,
    IndexParam,
    MilvusConfig,
    is_server_uri,
    lite_limits_problem,
)
from tunetrace.encoders.base import EncoderInfo
from tunetrace.errors import CatalogError, CatalogMismatchError, ConfigError
from tunetrace.redact import redact_text, redact_url
from tunetrace.store.base import TRACK_ID_BITS, Hit, Reference, Track, TrackSpan, track_id_for
from tunetrace.store.lock import CatalogLock

log = logging.getLogger(__name__)

# milvus-lite 2.5 imports pkg_resources (kept by the setuptools<81 pin) and warns on every start;
# the warning is about its packaging, not about anything a user can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", module="milvus_lite")


def _route_pymilvus_logs() -> None:
    """pymilvus installs its own stderr handlers when imported (its own format, propagation off,
    ERROR and INFO levels), which bypass ours: no station, no journald priority, no JSON, and every
    failed request printed a multi-KB traceback (~55 MB a day while a catalog is down). Its records
    go to the root logger like every other library's, and only at DEBUG: its failures reach us as
    exceptions, which the caller reports once."""
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
        library_log = logging.getLogger(name)
        for handler in list(library_log.handlers):
            library_log.removeHandler(handler)
        library_log.propagate = True
        library_log.setLevel(logging.DEBUG if debug else logging.CRITICAL)


_route_pymilvus_logs()

SCHEMA_VERSION = 3
"""Version of the catalog's layout and ids; a catalog of another version is refused with what to do.
2: track ids are 53-bit (were 63-bit, which JavaScript consumers of the MQTT payloads rounded).
3: a track's identity (content hash, hence id) is its audio stream without the tags, so re-tagging
a file updates its track; tracks carry an ISRC. A layout-2 catalog's ids hash the whole file, so
they cannot be carried over: its files are re-ingested into a new catalog."""
_MAX_TEXT = 1024
_PLACEHOLDER_DIM = 2  # Milvus requires a vector field in every collection
_QUERY_PAGE = 1000
_SEARCH_BATCH = 256
# A server's default ("Bounded") lets reads lag writes by seconds: a catalog just created would not
# be found on reopen, a re-ingest would not see the track it just added, and a delete could miss
# rows it should replace. Strong makes every read see every earlier write.
_CONSISTENCY = "Strong"
_SEARCH_CONSISTENCY = "Session"
"""Vector searches wait only for this client's own writes: under Strong a server holds every
search until its time tick catches up (~200 ms: measured 205 ms median for one query vector on an
IVF_SQ8 index whose search itself takes 3-4 ms, docs/scaling.md §2), which alone would exceed a
5 s identify's budget of 100 ms. A process that only searches (the daemon) waits for nothing; one
that inserts and then searches (ingest, tests) still sees what it wrote. Windows another process
inserted moments ago become visible within the server's time tick; track rows are read Strong."""

SERVER_DEFAULT_INDEX = "HNSW"
"""``milvus.index.type: auto`` on a server, chosen by measurement (docs/scaling.md §2): at 2,000
tracks (854,301 vectors) HNSW (M 16, efConstruction 100) searched at ef 256 kept 140 of exact
search's 141 identify-level hits (99.3 %; IVF_SQ8 nlist 1024 / nprobe 64: 97.9 %), answered a 5 s
identify in 44 ms (median; IVF_SQ8 57 ms), and its top-1 track was always among the exact top 10's. It costs
~4x the memory of IVF_SQ8 (float32 vectors + links) and builds ~5-10x slower (598 s for 854,301
vectors on 2 loaded cores): IVF_SQ8 stays the documented choice where memory or build time
matters more than the last points of recall."""

HNSW_DEFAULT_EF = 256
"""HNSW's search breadth when ``milvus.index.search`` is empty: at 2,000 tracks ef 64 / 128 / 256
kept 97.2 / 97.9 / 99.3 % of exact search's identify-level hits (docs/scaling.md §2). At 20,000
tracks (efConstruction 200, settled into 2 segments) ef 256 / 384 / 512 keep 95.9 / 96.6 / 98.0 %
at 68 / 75 / 90 ms per 5 s identify (p95 88 / 102 / 143 ms): 256 stays the default for the
100 ms target, and 512 is the documented setting where recall matters more (docs/scaling.md §3)."""
HNSW_LIVE_DEFAULT_EF = 128
"""HNSW's search breadth for the daemon's live searches when ``milvus.index.live_search`` and
``search`` are both empty. A station votes over many windows and searches two every 0.5 s of
audio: at 20,000 tracks on the live benchmark streams ef 128 cost the server 6.5 ms of CPU per
0.5 s against 12.6 ms at 256, with the same plays (noisy stream: latency p95 7.6 s against
6.5 s); ef 64 saved little more (5.9 ms) and let p95 grow to 10.8 s (docs/scaling.md, "Live
searches at 20,000 tracks")."""

DEFAULT_BUILD: dict[str, dict[str, IndexParam]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
    "IVF_PQ": {"nlist": 1024, "m": 16, "nbits": 8},
    "SCANN": {"nlist": 1024},
}
"""Build parameters when ``milvus.index.build`` is empty. HNSW's efConstruction 200: measured on
the 20,000-track catalog (8.4M vectors, docs/scaling.md §3, session 10) it keeps 99.3 % of exact
search's identify-level hits at ef 256 where 100 kept 95.0 %, and every query window's right place
at ef 128 where 100 kept 95.5 % (7 sealed segments; once Milvus compacted them into 2, the same
ef costs half the server CPU per vector and finds less: 98.8 % at ef 256). It costs about twice
the build CPU (8.4M vectors indexed in ~40 minutes on 2 cores, then again after compaction)."""
DEFAULT_SEARCH: dict[str, dict[str, IndexParam]] = {
    "IVF_FLAT": {"nprobe": 16},
    "IVF_SQ8": {"nprobe": 64},
    "IVF_PQ": {"nprobe": 16},
    "SCANN": {"nprobe": 16},
}
"""Search parameters when ``milvus.index.search`` is empty (HNSW and DISKANN scale with top_k).
IVF_SQ8 searches 64 of its 1024 lists: at 2,000 tracks nprobe 16 kept 26 of exact search's 31
hits under interfering music, nprobe 64 kept 30 (28 on another build), for 0.7-1.4 ms per window
in a batch (docs/scaling.md §3)."""
LITE_COMFORTABLE_VECTORS = 200_000
"""Beyond this many vectors (~470 tracks) an exact (FLAT) Milvus Lite catalog misses the live
target of 5 ms of search per 0.5 s of audio (two windows at the fingerprint's 0.25 s hop, so
2.5 ms per searched window). Lite's exact search cost grows linearly with the catalog; its lowest
measured cost is 11 ms per query window at 854,301 vectors (13 ns per catalog vector, a 5 s
identify in 900 ms), so 2.5 ms is reached near 190,000 vectors (docs/scaling.md §2; under load it
measured 52-82 ms per window, which would put the limit lower still)."""


@dataclass(frozen=True)
class IndexChoice:
    """The vectors collection's index as the catalog records it."""

    type: str
    build: dict[str, IndexParam]
    shards: int = 1

    @classmethod
    def resolve(cls, config: IndexConfig, shards: int, *, is_lite: bool) -> IndexChoice:
        kind = config.type if config.type != "auto" else ("FLAT" if is_lite else SERVER_DEFAULT_INDEX)
        return cls(kind, dict(config.build) or dict(DEFAULT_BUILD.get(kind, {})), shards)

    @classmethod
    def legacy(cls, *, is_lite: bool) -> IndexChoice:
        """What catalogs made before the index was recorded were built with."""
        return cls("FLAT", {}) if is_lite else cls("HNSW", {"M": 16, "efConstruction": 200})

    def search_params(
        self, configured: dict[str, IndexParam], top_k: int, *, live: bool = False,
    ) -> dict[str, IndexParam]:
        if configured:
            return dict(configured)
        if self.type == "HNSW":
            return {"ef": max(HNSW_LIVE_DEFAULT_EF if live else HNSW_DEFAULT_EF, top_k * 2)}
        if self.type == "DISKANN":
            return {"search_list": max(100, top_k)}
        return dict(DEFAULT_SEARCH.get(self.type, {}))


def _clip(text: str) -> str:
    encoded = text.encode("utf-8")[: _MAX_TEXT - 1]
    return encoded.decode("utf-8", "ignore")


class CatalogStore:
    """A catalog of tracks and window vectors in one Milvus database."""

    def __init__(
        self, client: MilvusClient, prefix: str, info: EncoderInfo, is_lite: bool,
        timeout_s: float | None = None, index: IndexConfig | None = None, shards: int = 1,
        lock: CatalogLock | None = None,
    ) -> None:
        self._client = client
        self.lock = lock
        """Held for an embedded catalog while it is open (``None`` for a server)."""
        self._index_config = index or IndexConfig()
        self._wanted_index = IndexChoice.resolve(self._index_config, shards, is_lite=is_lite)
        self.index = self._wanted_index
        """The index the catalog was built with (read from it when it exists)."""
        self._timeout_s = timeout_s
        """Per request: a hung or restarting server fails a call (``CatalogError``) instead of
        blocking its caller forever (pymilvus waits without limit by default)."""
        self._info = info
        self._vectors = f"{prefix}_vectors"
        self._tracks = f"{prefix}_tracks"
        self._meta = f"{prefix}_meta"
        self._is_lite = is_lite
        self._reopen: tuple[MilvusConfig, str] | None = None
        """How to connect again when Milvus Lite's server process has died (set by ``open``)."""
        self._restarting = False
        self._live = False
        """Searches are the daemon's live ones (``milvus.index.live_search``)."""

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, config: MilvusConfig, uri: str, info: EncoderInfo, *, create: bool, live: bool = False,
    ) -> CatalogStore:
        """Connect, then check (or, with ``create``, initialise) the catalog's encoder record.
        ``live``: the daemon's store, searched with ``milvus.index.live_search``."""
        is_lite = not is_server_uri(uri)
        problem = lite_limits_problem(config.index.type, config.shards) if is_lite else None
        if problem:
            raise ConfigError(problem)
        lock = _lock_if_embedded(uri)
        try:
            client, is_lite = _connect(config, uri)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store = cls(
            client, config.collection_prefix, info, is_lite, config.timeout_s,
            index=config.index, shards=config.shards, lock=lock,
        )
        store._reopen = (config, uri)
        store._live = live
        try:
            store._check_or_create(create=create)
        except BaseException:
            store.close()
            raise
        return store

    @property
    def is_embedded(self) -> bool:
        """Milvus Lite: one process at a time (the daemon hands ingest work in over its socket)."""
        return self._is_lite

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> CatalogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def info(self) -> EncoderInfo:
        return self._info

    def _check_or_create(self, *, create: bool) -> None:
        expected = {**asdict(self._info), "schema_version": SCHEMA_VERSION}
        if self._has(self._meta):
            self._call(lambda: self._client.load_collection(self._meta, timeout=self._timeout_s))
            rows = self._call(lambda: self._client.query(
                self._meta, filter='key == "catalog"', output_fields=["value"], timeout=self._timeout_s,
            ))
            if rows:
                recorded = json.loads(rows[0]["value"])
                if recorded.get("schema_version") != SCHEMA_VERSION:
                    raise CatalogMismatchError(_schema_message(recorded.get("schema_version")))
                if recorded != expected:
                    raise CatalogMismatchError(_mismatch_message(recorded, expected))
                self.index = self._recorded_index()
                self._load()
                return
        if not create:
            raise CatalogError(
                "the catalog is empty or does not exist yet; run `tunetrace ingest PATH...` first"
            )
        self._create_collections()
        self._call(lambda: self._client.upsert(
            self._meta,
            [
                {"key": key, "value": json.dumps(value), "placeholder": [0.0] * _PLACEHOLDER_DIM}
                for key, value in (("catalog", expected), ("index", asdict(self.index)))
            ],
            timeout=self._timeout_s,
        ))
        self._load()

    def _recorded_index(self) -> IndexChoice:
        """The index this catalog was created with; a different configured one is reported."""
        rows = self._call(lambda: self._client.query(
            self._meta, filter='key == "index"', output_fields=["value"], timeout=self._timeout_s,
        ))
        if rows:
            recorded = IndexChoice(**json.loads(rows[0]["value"]))
        else:
            recorded = IndexChoice.legacy(is_lite=self._is_lite)
        wanted = self._wanted_index
        differs = (wanted.type, wanted.build) != (recorded.type, recorded.build)
        if self._index_config.type != "auto" and differs:
            log.warning(
                "milvus.index asks for %s %s but this catalog was built with %s %s; it keeps its index "
                "(to change it, ingest into a new milvus.collection_prefix)",
                wanted.type, wanted.build, recorded.type, recorded.build,
            )
        return recorded

    def _create_collections(self) -> None:
        if not self._has(self._vectors):
            schema = self._client.create_schema(auto_id=True, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("track_id", DataType.INT64)
            schema.add_field("offset_s", DataType.FLOAT)
            schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self._info.dimension)
            index = self._client.prepare_index_params()
            index.add_index(
                "embedding", index_type=self.index.type, metric_type=self._info.metric,
                params=dict(self.index.build),
            )
            shards = {} if self._is_lite else {"num_shards": self.index.shards}
            self._call(lambda: self._client.create_collection(
                self._vectors, schema=schema, index_params=index, consistency_level=_CONSISTENCY,
                timeout=self._timeout_s, **shards,
            ))
        if not self._has(self._tracks):
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("track_id", DataType.INT64, is_primary=True)
            for name in ("title", "artist", "album", "source_path", "content_hash", "isrc"):
                schema.add_field(name, DataType.VARCHAR, max_length=_MAX_TEXT)
            schema.add_field("duration_s", DataType.FLOAT)
            schema.add_field("n_vectors", DataType.INT64)
            schema.add_field("ingested_at", DataType.DOUBLE)
            schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=_PLACEHOLDER_DIM)
            self._create_with_placeholder_index(self._tracks, schema)
        if not self._has(self._meta):
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("value", DataType.VARCHAR, max_length=4096)
            schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=_PLACEHOLDER_DIM)
            self._create_with_placeholder_index(self._meta, schema)

    def _create_with_placeholder_index(self, name: str, schema: Any) -> None:
        index = self._client.prepare_index_params()
        index.add_index("placeholder", index_type="FLAT", metric_type="L2")
        self._call(lambda: self._client.create_collection(
            name, schema=schema, index_params=index, consistency_level=_CONSISTENCY, timeout=self._timeout_s,
        ))

    def _load(self) -> None:
        for name in (self._vectors, self._tracks, self._meta):
            self._call(lambda name=name: self._client.load_collection(name, timeout=self._timeout_s))

    def _has(self, name: str) -> bool:
        return bool(self._call(lambda: self._client.has_collection(name, timeout=self._timeout_s)))

    def vector_shards(self) -> int:
        """Shards of the vectors collection as the server reports them (Milvus Lite has one and
        reports 0)."""
        if self._is_lite:
            return 1
        described = self._call(
            lambda: self._client.describe_collection(self._vectors, timeout=self._timeout_s),
        )
        return int(described.get("num_shards", 1))

    def size_warning(self, n_vectors: int) -> str | None:
        """Said when a catalog has outgrown its store, with the fix; ``None`` while it fits."""
        if self._is_lite and self.index.type == "FLAT" and n_vectors > LITE_COMFORTABLE_VECTORS:
            return (
                f"this Milvus Lite catalog holds {n_vectors:,} vectors; above "
                f"{LITE_COMFORTABLE_VECTORS:,} its exact search costs each live station more than 5 ms "
                "per 0.5 s of audio. Move it to a Milvus server with an approximate index (milvus.uri, "
                f"milvus.index.type: auto or {SERVER_DEFAULT_INDEX}; docs/scaling.md) and re-ingest"
            )
        return None

    # -- tracks ----------------------------------------------------------------------------------

    def find_by_hash(self, content_hash: str) -> Track | None:
        return self.get_tracks([track_id_for(content_hash)]).get(track_id_for(content_hash))

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        wanted = sorted({int(t) for t in track_ids})
        if not wanted:
            return {}
        rows = self._call(
            lambda: self._client.query(
                self._tracks, filter=f"track_id in {wanted}", output_fields=_TRACK_FIELDS,
                timeout=self._timeout_s,
            )
        )
        return {int(r["track_id"]): _track_from_row(r) for r in rows}

    def tracks(self) -> list[Track]:
        """Every complete track, in title order. Paged like every other request through ``_call``,
        so a server that is down or restarting is a ``CatalogError`` (the daemon's periodic
        catalog refresh retries on it) rather than a pymilvus exception that ends the service."""

        def read_all() -> list[Track]:
            found: list[Track] = []
            iterator = self._client.query_iterator(
                self._tracks, batch_size=_QUERY_PAGE, filter="track_id >= 0", output_fields=_TRACK_FIELDS,
                timeout=self._timeout_s,
            )
            try:
                while batch := iterator.next():
                    found.extend(_track_from_row(r) for r in batch)
            finally:
                iterator.close()
            return found

        found: list[Track] = self._call(read_all)
        return sorted(found, key=lambda t: (t.title.lower(), t.track_id))

    def add_track(
        self, track: Track, embeddings: np.ndarray, offsets_s: np.ndarray, insert_batch: int = 5000
    ) -> None:
        """Replace any earlier vectors of this track, insert the new ones, then mark it complete."""
        if embeddings.shape[0] != offsets_s.shape[0]:
            raise ValueError("one offset per embedding is required")
        if embeddings.ndim != 2 or embeddings.shape[1] != self._info.dimension:
            raise ValueError(f"embeddings must have shape (n, {self._info.dimension})")
        self._delete_vectors(track.track_id)
        for start in range(0, embeddings.shape[0], insert_batch):
            stop = start + insert_batch
            rows = [
                {"track_id": track.track_id, "offset_s": float(off), "embedding": vec}
                for vec, off in zip(embeddings[start:stop], offsets_s[start:stop], strict=True)
            ]
            self._call(lambda rows=rows: self._client.insert(self._vectors, rows, timeout=self._timeout_s))
        row = {
            **{k: _clip(v) if isinstance(v, str) else v for k, v in asdict(track).items()},
            "placeholder": [0.0] * _PLACEHOLDER_DIM,
        }
        self._call(lambda: self._client.upsert(self._tracks, [row], timeout=self._timeout_s))

    def add_new_tracks(
        self, items: Sequence[tuple[Track, np.ndarray, np.ndarray]], insert_batch: int = 20_000,
    ) -> None:
        """Bulk path for tracks the caller knows are absent (a benchmark catalog being filled):
        their vectors in a few large inserts, then their track rows in one upsert. ``add_track``'s
        per-track delete and the caller's per-track lookup cost a consistent read each on a
        server (tens of ms), which would dominate inserting 20,000 tracks."""
        rows: list[dict[str, Any]] = []
        for track, embeddings, offsets_s in items:
            if embeddings.shape != (offsets_s.shape[0], self._info.dimension):
                raise ValueError(f"embeddings must have shape (n, {self._info.dimension}), one offset each")
            rows.extend(
                {"track_id": track.track_id, "offset_s": float(off), "embedding": vec}
                for vec, off in zip(embeddings, offsets_s, strict=True)
            )
        for start in range(0, len(rows), insert_batch):
            batch = rows[start : start + insert_batch]
            self._call(lambda batch=batch: self._client.insert(self._vectors, batch, timeout=self._timeout_s))
        track_rows = [
            {
                **{k: _clip(v) if isinstance(v, str) else v for k, v in asdict(track).items()},
                "placeholder": [0.0] * _PLACEHOLDER_DIM,
            }
            for track, _, _ in items
        ]
        if track_rows:
            self._call(lambda: self._client.upsert(self._tracks, track_rows, timeout=self._timeout_s))

    def track_vectors(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        """A track's stored vectors and offsets (the exact reference of an index measurement)."""
        rows = self._call(lambda: self._client.query(
            self._vectors, filter=f"track_id == {int(track_id)}", output_fields=["embedding", "offset_s"],
            timeout=self._timeout_s,
        ))
        vectors = np.array([r["embedding"] for r in rows], np.float32).reshape(-1, self._info.dimension)
        return vectors, np.array([float(r["offset_s"]) for r in rows])

    def content_hashes(self) -> set[str]:
        """Content hashes of every complete track (one paged query: resuming a bulk fill)."""
        return {t.content_hash for t in self.tracks()}

    def seal_and_index(self, poll_s: float = 5.0, limit_s: float = 3600.0) -> float:
        """Seal the vectors still in growing segments (searched by brute force until sealed) and
        wait until every row is indexed; the seconds waited. Before measuring a bulk-filled
        catalog: what a long-running server reaches by itself."""
        started = time.monotonic()
        self._call(lambda: self._client.flush(self._vectors, timeout=None))
        while time.monotonic() - started < limit_s:
            names = self._call(lambda: self._client.list_indexes(self._vectors, timeout=self._timeout_s))
            described = [
                self._call(lambda name=name: self._client.describe_index(
                    self._vectors, name, timeout=self._timeout_s,
                ))
                for name in names
            ]
            if all(int(d.get("pending_index_rows", 0)) == 0
                   and int(d.get("indexed_rows", 0)) >= int(d.get("total_rows", 0)) for d in described):
                break
            time.sleep(poll_s)
        return time.monotonic() - started

    def rebuild_index(self, choice: IndexChoice) -> float:
        """Replace the vectors collection's index by ``choice`` and record it; the seconds the
        build took (Milvus builds it per sealed segment; ``create_index`` returns when all are
        built). For measuring index types on one collection without inserting it again."""
        self._call(lambda: self._client.flush(self._vectors, timeout=self._timeout_s))
        self._call(lambda: self._client.release_collection(self._vectors, timeout=self._timeout_s))
        for name in self._call(lambda: self._client.list_indexes(self._vectors, timeout=self._timeout_s)):
            self._call(lambda name=name: self._client.drop_index(
                self._vectors, name, timeout=self._timeout_s,
            ))
        index = self._client.prepare_index_params()
        index.add_index(
            "embedding", index_type=choice.type, metric_type=self._info.metric, params=dict(choice.build),
        )
        started = time.monotonic()
        self._call(lambda: self._client.create_index(self._vectors, index, timeout=None))
        built_s = time.monotonic() - started
        self._call(lambda: self._client.load_collection(self._vectors, timeout=None))
        self._call(lambda: self._client.upsert(
            self._meta,
            [{"key": "index", "value": json.dumps(asdict(choice)), "placeholder": [0.0] * _PLACEHOLDER_DIM}],
            timeout=self._timeout_s,
        ))
        self.index = choice
        return built_s

    def update_track(self, track: Track) -> None:
        """Rewrite a complete track's metadata (re-tagged file); its vectors stay as they are."""
        row = {
            **{k: _clip(v) if isinstance(v, str) else v for k, v in asdict(track).items()},
            "placeholder": [0.0] * _PLACEHOLDER_DIM,
        }
        self._call(lambda: self._client.upsert(self._tracks, [row], timeout=self._timeout_s))

    def remove_track(self, track_id: int) -> bool:
        """Delete a track and its vectors; ``False`` if there was no such track."""
        existed = bool(self.get_tracks([track_id]))
        self._call(lambda: self._client.delete(
            self._tracks, filter=f"track_id == {int(track_id)}", timeout=self._timeout_s,
        ))
        self._delete_vectors(track_id)
        return existed

    def _delete_vectors(self, track_id: int) -> None:
        self._call(lambda: self._client.delete(
            self._vectors, filter=f"track_id == {int(track_id)}", timeout=self._timeout_s,
        ))

    def vector_count(self) -> int:
        rows = self._call(lambda: self._client.query(
            self._vectors, filter="", output_fields=["count(*)"], timeout=self._timeout_s,
        ))
        return int(rows[0]["count(*)"]) if rows else 0

    # -- search ----------------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        """The ``top_k`` nearest catalog windows of each query vector, most similar first.

        ``similarity`` is the inner product for IP catalogs and ``-distance`` for L2 ones, so
        larger is always better.
        """
        results: list[list[Hit]] = []
        params: dict[str, Any] = {"metric_type": self._info.metric}
        # Live: ``live_search``, else a configured ``search``, else the live defaults.
        configured = self._index_config.search
        if self._live:
            configured = self._index_config.live_search or configured
        index_params = self.index.search_params(configured, top_k, live=self._live)
        if index_params:
            params["params"] = index_params
        for start in range(0, vectors.shape[0], _SEARCH_BATCH):
            chunk = vectors[start : start + _SEARCH_BATCH].astype(np.float32)
            raw = self._call(
                lambda chunk=chunk: self._client.search(
                    self._vectors, data=list(chunk), limit=top_k,
                    output_fields=["track_id", "offset_s"], search_params=params,
                    anns_field="embedding", timeout=self._timeout_s,
                    consistency_level=_SEARCH_CONSISTENCY,
                )
            )
            sign = 1.0 if self._info.metric == "IP" else -1.0
            for i, hits in enumerate(raw):
                results.append([
                    Hit(
                        query_index=start + i,
                        track_id=int(h["entity"]["track_id"]),
                        offset_s=float(h["entity"]["offset_s"]),
                        similarity=sign * float(h["distance"]),
                    )
                    for h in hits
                ])
        return results

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        """The stored windows of every span in one query (a few dozen rows: the scalar filter, not
        the vector index, finds them)."""
        if not spans:
            return []
        clauses = " or ".join(
            f"(track_id == {int(s.track_id)} and offset_s >= {s.from_s:.4f} and offset_s <= {s.to_s:.4f})"
            for s in spans
        )
        rows = self._call(lambda: self._client.query(
            self._vectors, filter=clauses, output_fields=["track_id", "embedding", "offset_s"],
            timeout=self._timeout_s, consistency_level=_SEARCH_CONSISTENCY,
        ))
        found: list[Reference] = []
        for span in spans:
            mine = sorted(
                (r for r in rows
                 if int(r["track_id"]) == span.track_id and span.from_s <= float(r["offset_s"]) <= span.to_s),
                key=lambda r: float(r["offset_s"]),
            )
            vectors = np.array([r["embedding"] for r in mine], np.float32).reshape(-1, self._info.dimension)
            found.append(Reference(vectors, np.array([float(r["offset_s"]) for r in mine])))
        return found

    def _call(self, operation: Any) -> Any:
        """Run one request; every way it can fail becomes a ``CatalogError`` its caller handles.

        pymilvus raises ``MilvusException`` for errors it understands but lets some gRPC errors
        through unwrapped (a request timing out while the server restarts: DEADLINE_EXCEEDED).
        """
        try:
            return operation()
        except (MilvusException, grpc.RpcError):
            if not self._restart_dead_lite_server():
                self._raise_catalog_error()
            return self._once(operation)  # on the new server

    def _once(self, operation: Any) -> Any:
        try:
            return operation()
        except (MilvusException, grpc.RpcError):
            self._raise_catalog_error()

    def _raise_catalog_error(self) -> NoReturn:
        """Re-raise the exception being handled as a one-line ``CatalogError`` (no chained
        traceback: the cause is in the message, and it would be logged on every retry)."""
        try:
            raise  # noqa: PLE0704 - re-raises the exception being handled by the caller
        except MilvusException as exc:
            reason = redact_text(str(exc.message))
            raise CatalogError(f"Milvus request failed: {reason} (code {exc.code})") from None
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            name = code.name if code is not None else "unknown status"
            raise CatalogError(f"Milvus request failed: {name} (timeout {self._timeout_s} s)") from None

    def _restart_dead_lite_server(self) -> bool:
        """Milvus Lite runs its server as a child process; if that died (killed, OOM), start a new
        one on the same file and reconnect. ``True`` when that was done (the caller retries)."""
        if not self._is_lite or self._reopen is None or self._restarting:
            return False
        config, uri = self._reopen
        status = _lite_server_exit_status(uri)
        if status is None:
            return False
        log.warning("Milvus Lite's server process for %s died (exit status %d); starting a new one",
                    uri, status)
        self._restarting = True
        try:
            _forget_lite_server(uri)
            with contextlib.suppress(Exception):
                self._client.close()
            self._client, _ = _connect(config, uri)
            self._load()
        except CatalogError as exc:
            log.warning("Milvus Lite could not be restarted: %s", exc)
            return False
        finally:
            self._restarting = False
        log.info("Milvus Lite restarted on %s; the catalog answers again", uri)
        return True


_TRACK_FIELDS = [
    "track_id", "title", "artist", "album", "duration_s", "source_path", "content_hash",
    "n_vectors", "ingested_at", "isrc",
]


def _track_from_row(row: dict[str, Any]) -> Track:
    return Track(
        track_id=int(row["track_id"]), title=str(row["title"]), artist=str(row["artist"]),
        album=str(row["album"]), duration_s=float(row["duration_s"]),
        source_path=str(row["source_path"]), content_hash=str(row["content_hash"]),
        n_vectors=int(row["n_vectors"]), ingested_at=float(row["ingested_at"]),
        isrc=str(row.get("isrc") or ""),
    )


def _mismatch_message(recorded: dict[str, Any], expected: dict[str, Any]) -> str:
    differences = ", ".join(
        f"{key}: catalog has {recorded.get(key)!r}, encoder gives {expected[key]!r}"
        for key in expected
        if recorded.get(key) != expected[key]
    )
    return (
        f"this catalog was built with encoder {recorded.get('encoder_id')!r} but the configured "
        f"encoder is {expected['encoder_id']!r} ({differences}). Either set encoder.name back to "
        "the catalog's encoder, or point milvus.uri / milvus.collection_prefix at a new catalog "
        "and re-ingest with `tunetrace ingest`."
    )


def _schema_message(recorded: object) -> str:
    return (
        f"this catalog was made by another version of tunetrace (catalog layout {recorded!r}, this "
        f"version reads {SCHEMA_VERSION}: track ids are {TRACK_ID_BITS}-bit so that JavaScript reads "
        "them exactly, and a track is identified by its audio without the tags, so that re-tagging "
        "a file updates its track; tracks carry an ISRC). Point data_dir (or milvus.uri / "
        "milvus.collection_prefix) at a new catalog and re-ingest with `tunetrace ingest`."
    )


_LITE_KEEPALIVE_MS = 360_000
_CONNECT_ATTEMPTS = 3
_CONNECT_RETRY_S = 1.0


def _lite_server_exit_status(uri: str) -> int | None:
    """The exit status of this process's Milvus Lite server for ``uri`` if it has died, else ``None``."""
    from milvus_lite.server_manager import server_manager_instance

    path = str(Path(uri).absolute().resolve())
    server = server_manager_instance._servers.get(path)
    process = getattr(server, "_p", None)
    if process is None:
        return None
    status = process.poll()
    return None if status is None else int(status)


def _forget_lite_server(uri: str) -> None:
    """Drop the dead server from milvus_lite's registry, so the next client starts a fresh one."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(Path(uri).absolute().resolve()))


def _retrying(connect: Any) -> Any:
    """Connect, retrying a transient "unavailable" (a server still starting, a GOAWAY) twice."""
    for attempt in range(1, _CONNECT_ATTEMPTS + 1):
        try:
            return connect()
        except MilvusException as exc:
            if attempt == _CONNECT_ATTEMPTS or "unavailable" not in str(exc.message).lower():
                raise
            log.warning("Milvus not available yet (%s); retrying", exc.message)
            time.sleep(_CONNECT_RETRY_S * attempt)
    raise AssertionError("unreachable")


def _lock_if_embedded(uri: str) -> CatalogLock | None:
    """Take our lock before Milvus Lite sees the file (a refused Lite opener deletes Lite's lock)."""
    if is_server_uri(uri):
        return None
    return CatalogLock.acquire(Path(uri).expanduser().resolve())


def _connect(config: MilvusConfig, uri: str) -> tuple[MilvusClient, bool]:
    is_server = is_server_uri(uri)
    kwargs: dict[str, Any] = {"uri": uri, "timeout": config.timeout_s}
    if is_server:
        if config.token is not None:
            kwargs["token"] = config.token.get_secret_value()
        if config.db_name:
            kwargs["db_name"] = config.db_name
        if config.ca_file is not None:
            kwargs["server_pem_path"] = str(config.ca_file)
    else:
        Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Milvus Lite's local gRPC server allows a keepalive ping only every 5 minutes and answers
        # pymilvus' 10 s default with GOAWAY "too many pings" (fails the next call, or hangs a
        # long insert).
        kwargs["grpc_options"] = {
            "grpc.keepalive_time_ms": _LITE_KEEPALIVE_MS,
            "grpc.keepalive_permit_without_calls": False,
        }
    started = time.monotonic()
    shown = redact_url(uri)
    secrets = (config.token.get_secret_value(),) if config.token is not None else ()
    try:
        client = _retrying(lambda: MilvusClient(**kwargs))
    except MilvusException as exc:
        if not is_server:
            raise CatalogError(
                f"cannot open the embedded catalog {uri}: {exc.message}. Check that data_dir is "
                "writable and that no other program (outside tunetrace) has the catalog open."
            ) from exc
        raise CatalogError(
            f"cannot connect to Milvus at {shown}: {redact_text(str(exc.message), secrets)}. Check "
            "milvus.uri and that the server is running (milvus.token if it needs authentication)."
        ) from None
    except Exception as exc:
        raise CatalogError(f"cannot open Milvus at {shown}: {redact_text(str(exc), secrets)}") from None
    log.debug("connected to Milvus at %s in %.2f s", shown, time.monotonic() - started)
    return client, not is_server
