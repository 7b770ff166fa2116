"""Catalogs of any size, reproducibly: distractor vectors cached on disk, checked, inserted.

    python -m tunetrace.evaluation.scale vectors --count 20000 --cache /var/cache/tunetrace-scale
    python -m tunetrace.evaluation.scale check   --cache /var/cache/tunetrace-scale --sample 40
    python -m tunetrace.evaluation.scale insert  --cache /var/cache/tunetrace-scale --count 2000 -c cfg.yaml
    python -m tunetrace.evaluation.scale exact-eval -c cfg.yaml --cache ... --count 2000 --out DIR
    python -m tunetrace.evaluation.scale agree --exact DIR/results.csv --index OTHER/results.csv

``vectors`` embeds distractors (``evaluation.distractors``) with the shipped encoder and writes
them in chunks of ``CHUNK`` tracks: an interrupted run resumes at the first missing chunk, and a
later run reuses every chunk (embedding is the expensive part: ~8.4M windows for 20,000 tracks).
``check`` asks whether a distractor's excerpts are recognised as the source tracks it was made
from (they must not be: a distractor has to be a different recording).  ``insert`` adds the
cached vectors to the configured catalog without embedding again; the real soundtrack is then
ingested beside them and ``tunetrace eval`` measures hit and false-positive rates at that size.
``exact-eval`` runs the same evaluation with every search answered by brute force over the cached
vectors and the real tracks' vectors (``ExactCatalog``), and ``agree`` compares two evaluations
excerpt by excerpt: the right-track recall of an index against exact search at the identify level.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunetrace.audio.windows import frame
from tunetrace.config import Config, MatcherConfig, load_config
from tunetrace.encoders import Encoder, create_encoder
from tunetrace.evaluation.distractors import SourceTrack, make_distractor
from tunetrace.identify import Recognizer
from tunetrace.redact import redact_url
from tunetrace.store import Hit, Reference, Track, TrackSpan, open_catalog, track_id_for
from tunetrace.store.memory import MemoryCatalog

if TYPE_CHECKING:
    from tunetrace.store.milvus import CatalogStore

log = logging.getLogger(__name__)

CHUNK = 50
"""Distractors per cache file: small enough to lose little on interruption."""
EMBED_BATCH = 256
PROGRESS_EVERY_S = 10.0
CACHE_FORMAT = "tunetrace-distractors/1"
DEFAULT_SEED = 9
DEFAULT_SOURCES = (
    # Music that is not the evaluation catalog (warzone2100) nor its hold-outs: the training
    # soundtracks, which recognition is never measured on.
    ("wesnoth", Path("/usr/share/games/wesnoth/1.16/data/core/music")),
    ("nexuiz", Path("/usr/share/games/nexuiz/data/music.pk3")),
    ("ufoai", Path("/usr/share/games/ufoai/base/0music.pk3")),
)
CONTROL_SOURCES = (("warzone2100", Path("/usr/share/games/warzone2100/music")),)
"""Unrelated music for the check's control: the evaluation catalog, which no distractor uses."""


@dataclass(frozen=True)
class CachedDistractor:
    index: int
    kind: str
    sources: tuple[str, ...]
    duration_s: float
    n_vectors: int


@dataclass(frozen=True)
class CacheInfo:
    """Recorded beside the chunks: vectors of another encoder or seed are never mixed in."""

    format: str
    encoder_id: str
    seed: int
    chunk: int


def _decoded_pool(
    cache_dir: Path, sample_rate: int, sources: Sequence[tuple[str, Path]],
) -> list[SourceTrack]:
    from tunetrace.train.data import SourceSpec, prepare_source

    pool: list[SourceTrack] = []
    for name, path in sources:
        for npy in prepare_source(SourceSpec(name, path), cache_dir / "sources", sample_rate):
            pool.append(SourceTrack(f"{name}/{npy.stem}", np.load(npy)))
    if not pool:
        raise SystemExit("no source music found: install wesnoth-1.16-music, nexuiz-music, ufoai-music")
    return pool


def _check_cache_info(cache_dir: Path, info: CacheInfo) -> None:
    path = cache_dir / "cache.json"
    if path.exists():
        recorded = CacheInfo(**json.loads(path.read_text()))
        if recorded != info:
            raise SystemExit(
                f"{cache_dir} holds vectors of {recorded}, not {info}: use another --cache folder"
            )
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(info)))


def _chunk_path(cache_dir: Path, chunk: int) -> Path:
    return cache_dir / f"chunk-{chunk:05d}.npz"


def embed_audio(audio: np.ndarray, encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
    """Catalog vectors of ``audio`` and their offsets, framed exactly as ingest frames a file."""
    info = encoder.info
    windows, starts = frame(audio, info.window_spec)
    vectors = np.concatenate([
        encoder.embed(windows[i : i + EMBED_BATCH]) for i in range(0, windows.shape[0], EMBED_BATCH)
    ])
    return vectors, starts / info.sample_rate


def build_vectors(
    count: int, cache_dir: Path, encoder: Encoder, pool: Sequence[SourceTrack], seed: int,
) -> None:
    """Embed distractors ``0..count-1`` into ``cache_dir``, skipping chunks already there."""
    info = encoder.info
    _check_cache_info(cache_dir, CacheInfo(CACHE_FORMAT, info.encoder_id, seed, CHUNK))
    chunks = -(-count // CHUNK)
    started = last_report = time.monotonic()
    done_vectors = 0
    for chunk in range(chunks):
        path = _chunk_path(cache_dir, chunk)
        if path.exists():
            continue
        indices = range(chunk * CHUNK, min(count, (chunk + 1) * CHUNK))
        vectors, offsets, rows, meta = [], [], [], []
        for index in indices:
            distractor = make_distractor(index, pool, info.sample_rate, seed)
            v, o = embed_audio(distractor.audio, encoder)
            vectors.append(v.astype(np.float16))
            offsets.append(o.astype(np.float32))
            rows.append(np.full(v.shape[0], index, np.int32))
            duration_s = distractor.audio.size / info.sample_rate
            meta.append(CachedDistractor(index, distractor.kind, distractor.sources, duration_s, v.shape[0]))
        tmp = path.with_suffix(".tmp.npz")
        with tmp.open("wb") as handle:
            np.savez(
                handle, vectors=np.concatenate(vectors), offsets_s=np.concatenate(offsets),
                index=np.concatenate(rows), meta=np.array(json.dumps([asdict(m) for m in meta])),
            )
        tmp.replace(path)
        done_vectors += sum(m.n_vectors for m in meta)
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S or chunk == chunks - 1:
            last_report = now
            rate = done_vectors / max(now - started, 1e-9)
            left = sum(1 for c in range(chunk + 1, chunks) if not _chunk_path(cache_dir, c).exists())
            print(
                f"chunk {chunk + 1}/{chunks}: {done_vectors} vectors this run, {rate:.0f} windows/s, "
                f"~{left * CHUNK * 420 / max(rate, 1e-9) / 60:.0f} min left",
                file=sys.stderr, flush=True,
            )


def read_chunks(cache_dir: Path, count: int) -> Iterator[tuple[CachedDistractor, np.ndarray, np.ndarray]]:
    """Cached distractors ``0..count-1`` with their float32 vectors and offsets."""
    for chunk in range(-(-count // CHUNK)):
        path = _chunk_path(cache_dir, chunk)
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `vectors --count {count}` first")
        with np.load(path) as data:
            vectors, offsets, index = data["vectors"], data["offsets_s"], data["index"]
            meta = [CachedDistractor(**{**m, "sources": tuple(m["sources"])})
                    for m in json.loads(str(data["meta"]))]
        for item in meta:
            if item.index >= count:
                return
            rows = index == item.index
            yield item, vectors[rows].astype(np.float32), offsets[rows].astype(np.float64)


def distractor_track(item: CachedDistractor, seed: int) -> Track:
    content = f"distractor:{seed}:{item.index}"
    return Track(
        track_id=track_id_for(content), title=f"distractor-{item.index:06d}-{item.kind}", artist="",
        album="tunetrace distractors", duration_s=item.duration_s, source_path="", content_hash=content,
        n_vectors=item.n_vectors, ingested_at=time.time(),
    )


@dataclass(frozen=True)
class CheckResult:
    excerpts: int
    matched_a_source: int
    """Distractor excerpts recognised as a track they were made from."""
    matched_other: int
    control_excerpts: int
    control_matched: int
    """Excerpts of unrelated music (the control) recognised as any source track: the chance level
    a distractor is compared with (a remix draws on dozens of sources, so chance matches to one of
    them count against it)."""


def check_distractors(
    sample: int, pool: Sequence[SourceTrack], control: Sequence[np.ndarray], encoder: Encoder,
    matcher: MatcherConfig, seed: int, excerpt_s: float = 5.0, per_distractor: int = 3,
) -> CheckResult:
    """Identify excerpts of ``sample`` distractors, and as many of unrelated ``control`` music,
    against a catalog of the distractors' source tracks."""
    rate = encoder.info.sample_rate
    by_name = {s.name: s for s in pool}
    distractors = [make_distractor(i, pool, rate, seed) for i in range(sample)]
    catalog = MemoryCatalog()
    for name in sorted({n for d in distractors for n in d.sources}):
        source = by_name[name]
        vectors, offsets = embed_audio(source.audio, encoder)
        duration_s = source.audio.size / rate
        track = Track(track_id_for(name), name, "", "", duration_s, "", name, vectors.shape[0], 0.0)
        catalog.add_track(track, vectors, offsets)
    recognizer = Recognizer(encoder, catalog, matcher)
    rng = np.random.default_rng(seed)
    length = round(excerpt_s * rate)

    def excerpt(audio: np.ndarray) -> np.ndarray:
        start = int(rng.integers(0, audio.size - length))
        return audio[start : start + length]

    source_hits = other_hits = 0
    for distractor in distractors:
        own = {track_id_for(n) for n in distractor.sources}
        for _ in range(per_distractor):
            found = recognizer.identify(excerpt(distractor.audio)).track
            if found is not None:
                source_hits += found.track_id in own
                other_hits += found.track_id not in own
    control_queries = [control[i % len(control)] for i in range(sample * per_distractor)]
    control_hits = sum(recognizer.identify(excerpt(audio)).track is not None for audio in control_queries)
    return CheckResult(sample * per_distractor, source_hits, other_hits, len(control_queries), control_hits)


BULK_TRACKS = 24
"""Distractors per bulk insert (~10,000 vectors)."""


def insert_distractors(config: Config, encoder: Encoder, cache_dir: Path, count: int, seed: int) -> int:
    """Add cached distractors to the configured catalog (those already there are skipped: an
    interrupted insert resumes), in bulk inserts of ``BULK_TRACKS`` tracks."""
    added = 0
    started = last = time.monotonic()
    with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=True) as store:
        present = store.content_hashes()
        pending: list[tuple[Track, np.ndarray, np.ndarray]] = []
        for item, vectors, offsets in read_chunks(cache_dir, count):
            track = distractor_track(item, seed)
            if track.content_hash in present:
                continue
            pending.append((track, vectors, offsets))
            if len(pending) >= BULK_TRACKS:
                store.add_new_tracks(pending)
                added += len(pending)
                pending = []
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                print(f"inserted {added} distractors ({item.index + 1}/{count}), "
                      f"{added / (last - started):.1f} tracks/s", file=sys.stderr, flush=True)
        store.add_new_tracks(pending)
        added += len(pending)
    return added


class ExactCatalog:
    """A ``Catalog`` answering every search by brute-force inner product over one float32 matrix
    of all the catalog's vectors (8.4M x 128 = 4.3 GB at 20,000 tracks), with track rows from the
    store: the reference an approximate index is compared with at the identify level. The matrix
    is scored in blocks of catalog rows, keeping each query's running top-k, so no score matrix of
    queries x catalog is ever held."""

    BLOCK_ROWS = 1 << 19

    def __init__(
        self, tracks_from: Any, vectors: np.ndarray, track_ids: np.ndarray, offsets_s: np.ndarray,
        distractors: Sequence[Track] = (),
    ) -> None:
        self._tracks_from = tracks_from
        self._distractors = {t.track_id: t for t in distractors}
        """Track rows of the cached distractors, made as ``insert`` makes them: the store only has
        to hold the real tracks (a smaller catalog's server serves a larger exact reference)."""
        self._vectors = vectors
        self._track_ids = track_ids
        self._offsets = offsets_s
        self._rows_of_track: dict[int, tuple[int, int]] | None = None
        """Each track's rows (they are contiguous), found on the first verification."""

    @classmethod
    def from_cache(
        cls, store: Any, cache_dir: Path, count: int, seed: int,
    ) -> ExactCatalog:
        """The store's real (non-distractor) tracks, read back from it, and cached distractors
        ``0..count-1`` (their track rows made from the cache, as ``insert`` made them)."""
        real = [t for t in store.tracks() if not t.content_hash.startswith("distractor:")]
        parts = [(t.track_id, *store.track_vectors(t.track_id)) for t in real]
        rows = sum(v.shape[0] for _, v, _ in parts)
        for chunk in range(-(-count // CHUNK)):
            path = _chunk_path(cache_dir, chunk)
            if not path.exists():
                raise SystemExit(f"{path} is missing: run `vectors --count {count}` first")
            with np.load(path) as data:
                rows += sum(m["n_vectors"] for m in json.loads(str(data["meta"])) if m["index"] < count)
        dim = parts[0][1].shape[1] if parts else 128
        vectors = np.empty((rows, dim), np.float32)
        track_ids = np.empty(rows, np.int64)
        offsets = np.empty(rows, np.float64)
        at = 0
        for track_id, v, o in parts:
            vectors[at : at + v.shape[0]], track_ids[at : at + v.shape[0]] = v, track_id
            offsets[at : at + v.shape[0]] = o
            at += v.shape[0]
        distractors: list[Track] = []
        for item, v, o in read_chunks(cache_dir, count):
            distractors.append(distractor_track(item, seed))
            vectors[at : at + v.shape[0]] = v
            track_ids[at : at + v.shape[0]] = distractors[-1].track_id
            offsets[at : at + v.shape[0]] = o
            at += v.shape[0]
        if at != rows:
            raise SystemExit(f"{cache_dir}: read {at} vectors, its chunks describe {rows}")
        return cls(store, vectors, track_ids, offsets, distractors)

    def vector_count(self) -> int:
        return int(self._vectors.shape[0])

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        queries = np.asarray(vectors, np.float32)
        n = queries.shape[0]
        k = min(top_k, self._vectors.shape[0])
        if n == 0 or k == 0:
            return [[] for _ in range(n)]
        best = np.full((n, k), -np.inf, np.float32)
        best_rows = np.zeros((n, k), np.int64)
        for start in range(0, self._vectors.shape[0], self.BLOCK_ROWS):
            scores = queries @ self._vectors[start : start + self.BLOCK_ROWS].T
            # Only scores above a query's current k-th best can enter its top k: after the first
            # block these are few, so the sort runs on a handful of candidates.
            above = scores > best[:, -1:]
            for row in range(n):
                candidates = np.flatnonzero(above[row])
                if candidates.size == 0:
                    continue
                found = scores[row, candidates]
                if found.size > k:
                    part = np.argpartition(-found, k - 1)[:k]
                    candidates, found = candidates[part], found[part]
                pool_scores = np.concatenate([best[row], found])
                pool_rows = np.concatenate([best_rows[row], candidates + start])
                keep = np.argsort(-pool_scores, kind="stable")[:k]
                best[row], best_rows[row] = pool_scores[keep], pool_rows[keep]
        return [
            [Hit(q, int(self._track_ids[r]), float(self._offsets[r]), float(s))
             for s, r in zip(best[q], best_rows[q], strict=True) if np.isfinite(s)]
            for q in range(n)
        ]

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        if self._rows_of_track is None:
            starts = np.concatenate([[0], np.flatnonzero(np.diff(self._track_ids)) + 1])
            ends = np.append(starts[1:], self._track_ids.size)
            self._rows_of_track = {
                int(self._track_ids[a]): (int(a), int(b)) for a, b in zip(starts, ends, strict=True)
            }
        found: list[Reference] = []
        for span in spans:
            first, last = self._rows_of_track.get(span.track_id, (0, 0))
            offsets = self._offsets[first:last]
            rows = first + np.flatnonzero((offsets >= span.from_s) & (offsets <= span.to_s))
            rows = rows[np.argsort(self._offsets[rows], kind="stable")]
            found.append(Reference(self._vectors[rows], self._offsets[rows]))
        return found

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        found: dict[int, Track] = {t: self._distractors[t] for t in track_ids if t in self._distractors}
        others = [t for t in track_ids if t not in found]
        if others:
            found.update(self._tracks_from.get_tracks(others))
        return found

    def tracks(self) -> list[Track]:
        real = [t for t in self._tracks_from.tracks() if t.track_id not in self._distractors
                and not t.content_hash.startswith("distractor:")]
        return [*real, *self._distractors.values()]


@dataclass(frozen=True)
class Agreement:
    """How an index's identify answers compare with exact search's on the same excerpts."""

    exact_hits: int
    """Catalog excerpts exact search answered with the right track."""
    kept: int
    """Of those, answered with the right track by the index too: ``kept / exact_hits`` is the
    right-track recall against exact search at the identify level."""
    index_only_hits: int
    """Right-track answers of the index where exact search had none (chance either way)."""
    by_condition: dict[str, tuple[int, int]]
    """Condition -> (exact hits, kept)."""

    @property
    def recall(self) -> float:
        return self.kept / self.exact_hits if self.exact_hits else 1.0


HIT_COLUMNS = ("right_offset", "right_track")
"""What counts as found: a hit (the right track at the right offset, the headline hit rate of
``tunetrace eval``) or the right track at any offset."""


def _answers(path: Path, column: str) -> dict[int, tuple[str, bool]]:
    import csv

    with path.open(newline="") as handle:
        return {
            int(row["query_id"]): (row["condition"], row[column] == "1")
            for row in csv.DictReader(handle) if row["set"] == "catalog"
        }


def agreement(exact_csv: Path, index_csv: Path, column: str = "right_offset") -> Agreement:
    """Compare two ``results.csv`` of the same plan (same seed, cells and catalog) query by query:
    of the catalog excerpts exact search found (``column`` is 1), how many the index found too."""
    exact, index = _answers(exact_csv, column), _answers(index_csv, column)
    missing = sorted(set(exact) - set(index))
    if missing:
        raise SystemExit(
            f"{index_csv} lacks {len(missing)} catalog queries of {exact_csv} (e.g. {missing[:3]}): "
            "run both with the same --excerpts, --seed, --lengths and --conditions"
        )
    by_condition: dict[str, tuple[int, int]] = {}
    for query, (condition, hit) in exact.items():
        if hit:
            total, kept = by_condition.get(condition, (0, 0))
            by_condition[condition] = (total + 1, kept + index[query][1])
    return Agreement(
        exact_hits=sum(t for t, _ in by_condition.values()), kept=sum(k for _, k in by_condition.values()),
        index_only_hits=sum(1 for q, (_, hit) in index.items() if hit and q in exact and not exact[q][1]),
        by_condition=by_condition,
    )


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its living descendants (``/proc``)."""
    import os

    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry.name))
        ticks[int(entry.name)] = int(stat[11]) + int(stat[12])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += ticks.get(current, 0)
        todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


IndexParamValue = int | float | str


@dataclass(frozen=True)
class IndexSpec:
    """One index to measure: ``TYPE[:build[:search]]``, e.g. ``HNSW:M=16,efConstruction=200:ef=64``."""

    type: str
    build: dict[str, IndexParamValue]
    search: dict[str, IndexParamValue]

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        parts = text.split(":")
        if not parts[0] or len(parts) > 3:
            raise SystemExit(f"--spec {text!r}: expected TYPE[:key=value,...[:key=value,...]]")

        def params(part: str) -> dict[str, IndexParamValue]:
            found: dict[str, IndexParamValue] = {}
            for item in filter(None, part.split(",")):
                key, _, value = item.partition("=")
                found[key] = int(value) if value.isdigit() else value
            return found

        return cls(parts[0], params(parts[1]) if len(parts) > 1 else {},
                   params(parts[2]) if len(parts) > 2 else {})


@dataclass(frozen=True)
class QueryOrigin:
    """Where a query window was cut: the right answer of its search (file, start in seconds)."""

    path: Path
    start_s: float


def query_vectors(
    files: Sequence[Path], encoder: Encoder, count: int, seed: int,
) -> tuple[np.ndarray, list[QueryOrigin]]:
    """``count`` query vectors of real excerpts: windows of catalog music at random (off-grid)
    starts, half of them with white noise at 10 dB SNR, as a live station would search them, with
    the place each was cut from."""
    from tunetrace.audio.decode import decode_file
    from tunetrace.evaluation.degrade import white_noise

    rng = np.random.default_rng(seed)
    info = encoder.info
    size = info.window_spec.window_samples
    windows: list[np.ndarray] = []
    origins: list[QueryOrigin] = []
    audio = [decode_file(path, info.sample_rate) for path in files]
    while len(windows) < count:
        chosen = int(rng.integers(len(audio)))
        track = audio[chosen]
        start = int(rng.integers(0, track.size - size))
        window = track[start : start + size].astype(np.float32)
        if float(np.sqrt(np.mean(np.square(window)))) < 1e-3:
            continue
        windows.append(white_noise(window, 10.0, rng) if len(windows) % 2 else window)
        origins.append(QueryOrigin(files[chosen], start / info.sample_rate))
    return encoder.embed(np.stack(windows).astype(np.float32)), origins


def right_place_recall(
    found: Sequence[Sequence[tuple[int, float]]], truth: Sequence[set[tuple[int, float]]],
    answers: Sequence[tuple[int, float] | None], tolerance_s: float,
) -> tuple[float | None, int]:
    """Of the queries whose exact ``top_k`` holds the right place (the right track, at an offset
    within ``tolerance_s`` of where the query was cut), the share whose approximate ``top_k``
    holds it too, and how many those are. A query of unknown origin (``None``) is left out.

    The index's own part of the issue's "right-track recall against exact search": per query
    window, before any voting (``agree`` measures it at the identify level)."""

    def holds(neighbours: Iterable[tuple[int, float]], answer: tuple[int, float]) -> bool:
        return any(t == answer[0] and abs(o - answer[1]) <= tolerance_s for t, o in neighbours)

    exact_right = also_found = 0
    for neighbours, reference, answer in zip(found, truth, answers, strict=True):
        if answer is None or not holds(reference, answer):
            continue
        exact_right += 1
        also_found += holds(neighbours, answer)
    return (also_found / exact_right if exact_right else None), exact_right


def exact_neighbours(
    queries: np.ndarray, blocks: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], top_k: int,
) -> list[set[tuple[int, float]]]:
    """The exact ``top_k`` (track id, offset) of each query by inner product over every block of
    (vectors, track ids, offsets): the reference an approximate index's recall is measured on."""
    best_scores = np.full((queries.shape[0], top_k), -np.inf, np.float32)
    best_keys = np.zeros((queries.shape[0], top_k, 2), np.float64)
    for vectors, track_ids, offsets in blocks:
        scores = queries @ vectors.astype(np.float32).T
        keys = np.stack(
            [np.broadcast_to(track_ids, scores.shape), np.broadcast_to(offsets, scores.shape)], -1,
        )
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_keys = np.concatenate([best_keys, keys.astype(np.float64)], axis=1)
        keep = np.argpartition(-merged_scores, top_k - 1, axis=1)[:, :top_k]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_keys = np.take_along_axis(merged_keys, keep[..., None], axis=1)
    return [{(int(t), round(float(o), 2)) for t, o in row} for row in best_keys]


def _catalog_blocks(
    cache_dir: Path, count: int, seed: int, real: Sequence[tuple[int, np.ndarray, np.ndarray]],
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for item, vectors, offsets in read_chunks(cache_dir, count):
        batch.append((vectors, np.full(vectors.shape[0], distractor_track(item, seed).track_id), offsets))
        if len(batch) == CHUNK:
            yield tuple(np.concatenate(column) for column in zip(*batch, strict=True))  # type: ignore[misc]
            batch = []
    batch.extend((v, np.full(v.shape[0], t), o) for t, v, o in real)
    yield tuple(np.concatenate(column) for column in zip(*batch, strict=True))  # type: ignore[misc]


def _percentile_ms(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 3)


def _server_rss_mb(pid: int | None) -> float | None:
    """Resident memory of the server process and all its descendants (Linux ``/proc``)."""
    if pid is None:
        return None
    children: dict[int, list[int]] = {}
    rss_pages: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry.name))
        rss_pages[int(entry.name)] = int(statm[1])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss_pages.get(current, 0)
        todo.extend(children.get(current, []))
    import os

    return round(total * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _open_with(config: Config, spec: IndexSpec, encoder: Encoder) -> CatalogStore:
    """The configured catalog, searched with ``spec``'s parameters."""
    from tunetrace.store.milvus import CatalogStore

    update = {"type": spec.type, "build": spec.build, "search": spec.search}
    index = config.milvus.index.model_copy(update=update)
    milvus = config.milvus.model_copy(update={"index": index})
    return CatalogStore.open(milvus, config.milvus_uri(), encoder.info, create=False)


def measure_index(
    config: Config, encoder: Encoder, spec: IndexSpec, queries: np.ndarray,
    truth: list[set[tuple[int, float]]] | None, *, build: bool, server_pid: int | None, top_k: int,
    answers: Sequence[tuple[int, float] | None] = (),
) -> dict[str, object]:
    """Build ``spec`` on the configured catalog (optionally), then its recall against ``truth``
    (and, given each query's right ``answers``, its right-place recall against exact search), its
    search latency per vector (alone, and in batches of 64 as identify sends them), the server's
    CPU per vector in those batches and its memory."""
    from tunetrace.store.milvus import IndexChoice

    result: dict[str, object] = {"type": spec.type, "build": spec.build, "search": spec.search}
    with _open_with(config, spec, encoder) as store:
        if build:
            result["build_s"] = round(store.rebuild_index(IndexChoice(spec.type, dict(spec.build))), 1)
        result["vectors"] = store.vector_count()
        store.search(queries[:8], top_k)  # warm
        single: list[float] = []
        found: list[list[tuple[int, float]]] = []
        for vector in queries:
            began = time.perf_counter()
            hits = store.search(vector[None, :], top_k)[0]
            single.append(time.perf_counter() - began)
            found.append([(h.track_id, round(h.offset_s, 2)) for h in hits])
        batched: list[float] = []
        cpu_before_s = _tree_cpu_s(server_pid) if server_pid is not None else None
        for start in range(0, queries.shape[0] - 63, 64):
            began = time.perf_counter()
            store.search(queries[start : start + 64], top_k)
            batched.append((time.perf_counter() - began) / 64)
        if cpu_before_s is not None and server_pid is not None and batched:
            # The server's CPU per searched vector in batches of 64 (the batches only; a live
            # station's requests carry a few windows each and pay more per window in overhead).
            cpu_s = _tree_cpu_s(server_pid) - cpu_before_s
            result["server_cpu_ms_per_vector"] = round(1000 * cpu_s / (64 * len(batched)), 2)
        result.update({
            "single_ms_median": _percentile_ms(single, 50), "single_ms_p95": _percentile_ms(single, 95),
            "batch64_ms_per_vector": _percentile_ms(batched, 50) if batched else None,
            "server_rss_mb": _server_rss_mb(server_pid),
        })
        if truth is not None:
            recall = [len(set(f) & t) / len(t) for f, t in zip(found, truth, strict=True)]
            top1 = [bool(f) and f[0][0] in {k[0] for k in t} for f, t in zip(found, truth, strict=True)]
            result["recall_at_k"] = round(float(np.mean(recall)), 4)
            result["top1_track_in_exact"] = round(float(np.mean(top1)), 4)
            if answers:
                share, exact_right = right_place_recall(found, truth, answers, encoder.info.window_spec.hop_s)
                result["right_place_recall_vs_exact"] = None if share is None else round(share, 4)
                result["exact_right_places"] = exact_right
                result["queries_unplaced"] = sum(a is None for a in answers)
    return result


VECTOR_FORMATS = ("sign-bits", "float16")
"""Formats whose recall ``format_recall`` measures: binary from the 128 sign bits (Hamming), and
half precision."""


def _in_format(vectors: np.ndarray, kind: str) -> np.ndarray:
    converted: np.ndarray = (
        np.sign(vectors) if kind == "sign-bits" else vectors.astype(np.float16)
    ).astype(np.float32)
    return converted


def format_recall(
    args: argparse.Namespace, config: Config, encoder: Encoder, queries: np.ndarray,
    truth: list[set[tuple[int, float]]], kind: str,
) -> dict[str, object]:
    """Recall against exact float32 search of a catalog stored in another vector format, searched
    exactly (the best any index over that format can do). For sign bits the Hamming distance is
    ``(d - s_q . s_v) / 2``, so the exact inner product of the signs ranks the same."""
    from tunetrace.store.milvus import CatalogStore

    with CatalogStore.open(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
        real = [t for t in store.tracks() if not t.content_hash.startswith("distractor:")]
        vectors = [(t.track_id, *store.track_vectors(t.track_id)) for t in real]
    blocks = (
        (_in_format(v, kind), t, o) for v, t, o in _catalog_blocks(args.cache, args.count, args.seed, vectors)
    )
    found = exact_neighbours(_in_format(queries, kind), blocks, args.top_k)
    recall = [len(f & t) / len(t) for f, t in zip(found, truth, strict=True)]
    tracks = [bool({k[0] for k in f} & {k[0] for k in t}) for f, t in zip(found, truth, strict=True)]
    return {"format": kind, "top_k": args.top_k, "recall_at_k": round(float(np.mean(recall)), 4),
            "shares_a_track": round(float(np.mean(tracks)), 4)}


def run_indexes(args: argparse.Namespace, config: Config, encoder: Encoder) -> int:
    """The ``indexes`` action: every ``--spec`` measured in turn on the same collection."""
    from tunetrace.catalog.scan import scan_paths
    from tunetrace.store.milvus import CatalogStore, IndexChoice

    files = sorted(scan_paths([args.catalog], config.ingest.extensions))
    queries, origins = query_vectors(files, encoder, args.queries, args.seed)
    truth = None
    if args.truth_file is not None and args.truth_file.exists():
        recorded = json.loads(args.truth_file.read_text())
        truth = [{(int(t), float(o)) for t, o in row} for row in recorded]
    elif args.truth_file is not None:
        with CatalogStore.open(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
            real = [t for t in store.tracks() if not t.content_hash.startswith("distractor:")]
            vectors = [(t.track_id, *store.track_vectors(t.track_id)) for t in real]
        began = time.monotonic()
        blocks = _catalog_blocks(args.cache, args.count, args.seed, vectors)
        truth = exact_neighbours(queries, blocks, args.top_k)
        print(f"exact reference: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        args.truth_file.write_text(json.dumps([sorted(row) for row in truth]))
    if args.format:
        if truth is None:
            raise SystemExit("--format needs --truth-file")
        for kind in args.format:
            print(json.dumps(format_recall(args, config, encoder, queries, truth, kind)), flush=True)
        return 0
    if args.seal:
        with CatalogStore.open(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
            waited = store.seal_and_index()
        print(json.dumps({"sealed_and_indexed_after_s": round(waited, 1)}), flush=True)
    if args.build_only:
        for text in args.spec:
            spec = IndexSpec.parse(text)
            with _open_with(config, spec, encoder) as store:
                built_s = store.rebuild_index(IndexChoice(spec.type, dict(spec.build)))
            _emit_line({"type": spec.type, "build": spec.build, "build_s": round(built_s, 1)}, args.out)
        return 0
    places = _right_places(config, encoder, origins) if truth is not None else []
    for text in args.spec:
        result = measure_index(config, encoder, IndexSpec.parse(text), queries, truth,
                               build=args.build, server_pid=args.server_pid, top_k=args.top_k,
                               answers=places)
        _emit_line({**result, "queries": args.queries, "top_k": args.top_k}, args.out)
    return 0


def _right_places(
    config: Config, encoder: Encoder, origins: Sequence[QueryOrigin],
) -> list[tuple[int, float] | None]:
    """Each query's right place in the configured catalog: (track id, start), by the track's source
    file; ``None`` where the file is not in the catalog."""
    from tunetrace.store.milvus import CatalogStore

    with CatalogStore.open(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
        by_path = {str(Path(t.source_path).resolve()): t.track_id for t in store.tracks()}
    found = [by_path.get(str(o.path.resolve())) for o in origins]
    unplaced = sorted({str(o.path) for t, o in zip(found, origins, strict=True) if t is None})
    if unplaced:
        log.warning("%d query file(s) are not in the catalog by their path, so their queries are left "
                    "out of the right-place recall: %s", len(unplaced), ", ".join(unplaced[:5]))
    return [None if t is None else (t, o.start_s) for t, o in zip(found, origins, strict=True)]


def _emit_line(result: dict[str, Any], out: Path | None) -> None:
    """One JSON line per measurement, with the load it ran under: printed, and appended to ``out``."""
    line = json.dumps({**result, "load_avg": Path("/proc/loadavg").read_text().split()[:3]})
    print(line, flush=True)
    if out:
        with out.open("a") as handle:
            handle.write(line + "\n")


def _run_agree(args: argparse.Namespace) -> int:
    if args.exact is None or args.index is None:
        raise SystemExit("agree needs --exact RESULTS.csv and --index RESULTS.csv")
    for column in HIT_COLUMNS:
        found = agreement(args.exact, args.index, column)
        print(json.dumps({
            "found_as": column, "recall_vs_exact": round(found.recall, 4), "exact_found": found.exact_hits,
            "kept": found.kept, "index_only": found.index_only_hits,
            "by_condition": {c: [t, k] for c, (t, k) in sorted(found.by_condition.items())},
        }))
    return 0


def run_exact_eval(args: argparse.Namespace, config: Config) -> int:
    """``tunetrace eval`` on the configured catalog with every search answered exactly."""
    from tunetrace.cli.eval import _conditions, _lengths
    from tunetrace.evaluation.report import write_report
    from tunetrace.evaluation.run import EvalOptions, run_evaluation

    built: list[ExactCatalog] = []

    def exact(store: CatalogStore) -> ExactCatalog:
        began = time.monotonic()
        catalog = ExactCatalog.from_cache(store, args.cache, args.count, args.seed)
        print(f"exact catalog of {catalog.vector_count()} vectors ({args.count} distractors and the "
              f"store's real tracks; the store holds {store.vector_count()}) loaded in "
              f"{time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        built.append(catalog)
        return catalog

    options = EvalOptions(
        catalog_dir=args.catalog, holdout_dir=args.holdout, conditions=_conditions(args.conditions),
        lengths_s=_lengths(args.lengths), per_cell=args.excerpts, seed=args.eval_seed, progress=False,
        catalog_queries_only=not args.with_holdout,
    )
    run = run_evaluation(config, options, search_with=exact)
    out = args.out or Path("exact-eval")
    md_path, csv_path = write_report(run, out)
    print(f"{len(run.results)} queries answered exactly in {run.wall_s:.0f} s; "
          f"wrote {md_path} and {csv_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunetrace.evaluation.scale", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("vectors", "check", "insert", "indexes", "exact-eval", "agree",
                                           "server-cpu"))
    parser.add_argument("--cache", type=Path, default=None, help="cached vectors (outside the repo)")
    parser.add_argument("--count", type=int, default=20_000 - 30, help="distractors (vectors, insert)")
    parser.add_argument("--sample", type=int, default=40, help="distractors to check (check)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--config", "-c", type=Path, default=None, help="tunetrace config (insert, check)")
    parser.add_argument("--spec", action="append", default=[],
                        help="indexes: TYPE[:build[:search]], e.g. HNSW:M=16,efConstruction=200:ef=64")
    parser.add_argument("--build", action="store_true", help="indexes: build each spec before measuring")
    parser.add_argument("--truth-file", type=Path, default=None,
                        help="indexes: exact neighbours of the queries (computed and saved if missing)")
    parser.add_argument("--format", action="append", choices=VECTOR_FORMATS, default=[],
                        help="indexes: recall of vectors stored in this format against exact search")
    parser.add_argument("--seal", action="store_true",
                        help="indexes: seal growing segments and wait until every row is indexed")
    parser.add_argument("--build-only", action="store_true", help="indexes: build each spec, measure nothing")
    parser.add_argument("--queries", type=int, default=256, help="indexes: query vectors")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--server-pid", type=int, default=None, help="indexes: milvus-server's pid (memory)")
    parser.add_argument("--catalog", type=Path, default=CONTROL_SOURCES[0][1], help="indexes: real music")
    parser.add_argument("--out", type=Path, default=None,
                        help="indexes: append JSON lines here; exact-eval: the report folder")
    parser.add_argument("--holdout", type=Path, default=Path("/usr/share/games/etr/music"),
                        help="exact-eval: hold-out music (as `tunetrace eval --holdout`)")
    parser.add_argument("--excerpts", type=int, default=60, help="exact-eval: excerpts per cell")
    parser.add_argument("--eval-seed", type=int, default=1, help="exact-eval: seed of the excerpt plan")
    parser.add_argument("--lengths", default="5", help="exact-eval: excerpt lengths, e.g. 5 or 1,5")
    parser.add_argument("--conditions", default="clean,noise_10db,music_5db", help="exact-eval: conditions")
    parser.add_argument("--with-holdout", action="store_true",
                        help="exact-eval: also answer the hold-out excerpts (by default only the catalog's)")
    parser.add_argument("--exact", type=Path, default=None, help="agree: exact search's results.csv")
    parser.add_argument("--index", type=Path, default=None, help="agree: the index's results.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.action == "agree":
        return _run_agree(args)
    if args.action == "server-cpu":
        if args.server_pid is None:
            raise SystemExit("server-cpu needs --server-pid")
        print(json.dumps({"cpu_s": round(_tree_cpu_s(args.server_pid), 2),
                          "rss_mb": _server_rss_mb(args.server_pid), "at": time.time()}))
        return 0
    if args.cache is None:
        raise SystemExit(f"{args.action} needs --cache (the folder of cached distractor vectors)")
    return _run_with_config(args, load_config(args.config))


def _run_with_config(args: argparse.Namespace, config: Config) -> int:
    """The actions that open the configured catalog or the encoder."""
    if args.action == "exact-eval":
        return run_exact_eval(args, config)
    encoder = create_encoder(config.encoder, config.data_dir)
    if args.action == "indexes":
        return run_indexes(args, config, encoder)
    if args.action == "insert":
        added = insert_distractors(config, encoder, args.cache, args.count, args.seed)
        print(f"inserted {added} distractors into {redact_url(config.milvus_uri())}")
        return 0
    pool = _decoded_pool(args.cache, encoder.info.sample_rate, DEFAULT_SOURCES)
    if args.action == "vectors":
        build_vectors(args.count, args.cache, encoder, pool, args.seed)
        return 0
    control = [track.audio for track in _decoded_pool(args.cache, encoder.info.sample_rate, CONTROL_SOURCES)]
    result = check_distractors(args.sample, pool, control, encoder, config.matcher, args.seed)
    print(f"{result.excerpts} distractor excerpts of 5 s: {result.matched_a_source} recognised as a source "
          f"track they were made from, {result.matched_other} as another source track; control: "
          f"{result.control_matched} of {result.control_excerpts} excerpts of unrelated music recognised "
          "as a source track (chance level)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
