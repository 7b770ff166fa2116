"""Catalogs of any size, reproducibly: distractor vectors cached on disk, checked, inserted.

    python -m tunetrace.evaluation.scale vectors --count 20000 --cache /var/cache/tunetrace-scale
    python -m tunetrace.evaluation.scale check   --cache /var/cache/tunetrace-scale --sample 40
    python -m tunetrace.evaluation.scale insert  --cache /var/cache/tunetrace-scale --count 2000 -c cfg.yaml

``vectors`` embeds distractors (``evaluation.distractors``) with the shipped encoder and writes
them in chunks of ``CHUNK`` tracks: an interrupted run resumes at the first missing chunk, and a
later run reuses every chunk (embedding is the expensive part: ~8.4M windows for 20,000 tracks).
``check`` asks whether a distractor's excerpts are recognised as the source tracks it was made
from (they must not be: a distractor has to be a different recording).  ``insert`` adds the
cached vectors to the configured catalog without embedding again; the real soundtrack is then
ingested beside them and ``tunetrace eval`` measures hit and false-positive rates at that size.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tunetrace.audio.windows import frame
from tunetrace.config import Config, MatcherConfig, load_config
from tunetrace.encoders import Encoder, create_encoder
from tunetrace.evaluation.distractors import SourceTrack, make_distractor
from tunetrace.identify import Recognizer
from tunetrace.redact import redact_url
from tunetrace.store import Track, open_catalog, track_id_for
from tunetrace.store.memory import MemoryCatalog

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


def insert_distractors(config: Config, encoder: Encoder, cache_dir: Path, count: int, seed: int) -> int:
    """Add cached distractors to the configured catalog (those already there are skipped)."""
    added = 0
    started = last = time.monotonic()
    with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=True) as store:
        for item, vectors, offsets in read_chunks(cache_dir, count):
            track = distractor_track(item, seed)
            if store.find_by_hash(track.content_hash) is not None:
                continue
            store.add_track(track, vectors, offsets)
            added += 1
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                print(f"inserted {added} distractors ({item.index + 1}/{count}), "
                      f"{added / (last - started):.1f} tracks/s", file=sys.stderr, flush=True)
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunetrace.evaluation.scale", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("vectors", "check", "insert"))
    parser.add_argument("--cache", type=Path, required=True, help="cached vectors (outside the repo)")
    parser.add_argument("--count", type=int, default=20_000 - 30, help="distractors (vectors, insert)")
    parser.add_argument("--sample", type=int, default=40, help="distractors to check (check)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--config", "-c", type=Path, default=None, help="tunetrace config (insert, check)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    encoder = create_encoder(config.encoder, config.data_dir)
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
