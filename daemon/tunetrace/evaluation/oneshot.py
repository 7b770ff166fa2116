"""One-shot ``identify`` benchmark: warm latency per file, where the time goes, and the cold start.

    python -m tunetrace.evaluation.oneshot -c CONFIG --catalog DIR --queries DIR [--json FILE]

1. Queries: seeded excerpts of the catalog's tracks (``--lengths``, clean and with white noise at
   10 dB SNR), written once as 22.05 kHz 16-bit WAV files under ``--queries`` with a manifest of
   their truth (re-used by later runs, so before/after runs answer the very same files).
2. Warm latency: one batch ``tunetrace identify --json`` call over every query (after
   ``WARMUP_FILES`` files that are not counted); each record's ``latency_s`` is that file's time
   from the start of its decoding to its answer.  Also the call's wall time per file.
3. Cold start: ``tunetrace identify CONFIG one.wav`` and ``tunetrace identify --help`` as fresh
   processes, wall time of each run.
4. Stages: the same queries answered in this process by a ``Recognizer`` whose encoder and catalog
   are wrapped in timers (decode, features, embedding model, search requests and vectors, the
   rest: framing and voting).  After the others, because an embedded catalog stays locked by the
   process that opened it.
5. Search floor: one request of 1, 9, 17, 33, 73 random vectors (the query vectors of one window,
   and of 3/5/10 s files at the default hop): what the catalog itself costs per query vector.

The catalog (``data_dir`` / ``milvus.uri`` of the config) must already hold the ``--catalog``
folder (``tunetrace ingest``).  Run it on a quiet machine (``/work/quiet`` on the development one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import wave
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tunetrace.audio.decode import decode_file
from tunetrace.config import Config, load_config
from tunetrace.encoders import create_encoder
from tunetrace.encoders.base import Encoder, EncoderInfo
from tunetrace.evaluation.degrade import white_noise
from tunetrace.evaluation.excerpts import PREROLL_S, cut, is_quiet
from tunetrace.store import Catalog, Hit, Reference, Track, TrackSpan

QUERY_RATE = 22050
"""Query files are written at this rate, so decoding them includes a real resampling step."""
NOISE_SNR_DB = 10.0
WARMUP_FILES = 3
CONDITIONS = ("clean", "noise")
OFFSET_TOLERANCE_S = 0.5
"""An answer is right when it names the true track within this many seconds of the true offset."""
AUDIO_SUFFIXES = (".opus", ".ogg", ".mp3", ".flac", ".wav", ".m4a")


@dataclass(frozen=True)
class Query:
    """One query file and the truth it was cut from."""

    path: str
    length_s: float
    condition: str
    source: str
    offset_s: float


def make_queries(
    catalog_dir: Path, out_dir: Path, lengths_s: Sequence[float], per_cell: int, seed: int,
) -> list[Query]:
    """Cut (or re-use) ``per_cell`` seeded excerpts per (length, condition); the manifest holds the truth."""
    manifest = out_dir / "manifest.json"
    wanted = {"lengths_s": list(lengths_s), "per_cell": per_cell, "seed": seed, "catalog": str(catalog_dir)}
    if manifest.is_file():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        if saved.get("plan") == wanted:
            return [Query(**q) for q in saved["queries"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    tracks = sorted(p for p in catalog_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not tracks:
        raise SystemExit(f"error: {catalog_dir}: no audio files (looked for {', '.join(AUDIO_SUFFIXES)})")
    rng = np.random.default_rng(seed)
    decoded: dict[Path, np.ndarray] = {}
    queries: list[Query] = []
    for length_s in lengths_s:
        for index in range(per_cell):
            source, start_s, clean = _draw(tracks, decoded, rng, length_s)
            for condition in CONDITIONS:
                audio = clean if condition == "clean" else white_noise(clean, NOISE_SNR_DB, rng)
                path = out_dir / condition / f"{length_s:g}s-{index:03d}.wav"
                _write_wav(path, audio, QUERY_RATE)
                queries.append(Query(str(path), length_s, condition, str(source), start_s))
    manifest.write_text(json.dumps({"plan": wanted, "queries": [asdict(q) for q in queries]}, indent=1))
    return queries


def _draw(
    tracks: list[Path], decoded: dict[Path, np.ndarray], rng: np.random.Generator, length_s: float,
) -> tuple[Path, float, np.ndarray]:
    """A random audible excerpt of a random track (redrawn while it lands on near-silence)."""
    for _ in range(50):
        source = tracks[int(rng.integers(len(tracks)))]
        if source not in decoded:
            decoded[source] = decode_file(source, QUERY_RATE)
        audio = decoded[source]
        latest_s = audio.size / QUERY_RATE - length_s - 0.1
        if latest_s <= PREROLL_S:
            continue
        start_s = round(float(rng.uniform(PREROLL_S, latest_s)), 3)
        excerpt = cut(audio, QUERY_RATE, start_s, length_s)
        if not is_quiet(excerpt):
            return source, start_s, excerpt
    raise SystemExit("error: no audible excerpt found in 50 draws; is the catalog folder silent?")


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


# -- warm latency: the real command, one batch call ----------------------------------------------


def _command(config: Path | None) -> list[str]:
    return [sys.executable, "-m", "tunetrace", "identify", *(["-c", str(config)] if config else [])]


def warm_batch(
    config: Path | None, queries: Sequence[Query], batch_files: int = 1,
) -> tuple[list[dict[str, object]], float]:
    """Every query through one ``identify --json`` call; the records (warm-up dropped) and wall/file."""
    files = [q.path for q in queries[:WARMUP_FILES]] + [q.path for q in queries]
    started = time.perf_counter()
    result = subprocess.run(
        [*_command(config), "--json", "--batch-files", str(batch_files), *files],
        capture_output=True, text=True, check=False, timeout=1800,
    )
    wall_s = time.perf_counter() - started
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if len(records) != len(files):
        raise SystemExit(
            f"error: identify answered {len(records)} of {len(files)} files: {result.stderr[-800:]}"
        )
    return records[WARMUP_FILES:], wall_s / len(files)


def right_answer(query: Query, record: dict[str, object], titles: dict[str, int]) -> bool:
    offset = record.get("offset_s")
    return (
        bool(record.get("match"))
        and record.get("track_id") == titles.get(query.source)
        and isinstance(offset, float)
        and abs(offset - query.offset_s) <= OFFSET_TOLERANCE_S
    )


# -- stages: the same queries in this process, encoder and catalog behind timers ------------------


@dataclass
class StageClock:
    """Seconds spent per stage, and how many search requests and query vectors were sent."""

    decode_s: float = 0.0
    features_s: float = 0.0
    embed_s: float = 0.0
    search_s: float = 0.0
    identify_s: float = 0.0
    requests: int = 0
    vectors: int = 0
    files: int = 0
    per_file_s: list[float] = field(default_factory=list)

    def row(self) -> dict[str, float]:
        n = max(1, self.files)
        model_s = self.embed_s - self.features_s
        rest_s = self.identify_s - self.embed_s - self.search_s
        return {
            "decode_ms": 1000 * self.decode_s / n, "features_ms": 1000 * self.features_s / n,
            "model_ms": 1000 * model_s / n, "search_ms": 1000 * self.search_s / n,
            "framing_voting_ms": 1000 * rest_s / n,
            "total_ms": 1000 * (self.decode_s + self.identify_s) / n,
            "search_requests": self.requests / n, "query_vectors": self.vectors / n,
        }


class TimedEncoder:
    """The real encoder, timed; the log-mel front end is timed apart (computed once more for that)."""

    def __init__(self, inner: Encoder, clock: StageClock) -> None:
        self._inner = inner
        self._clock = clock

    @property
    def info(self) -> EncoderInfo:
        return self._inner.info

    def embed(self, windows: np.ndarray) -> np.ndarray:
        spec = getattr(self._inner, "mel_spec", None)
        if spec is not None:
            from tunetrace.audio.features import log_mel

            started = time.perf_counter()
            log_mel(windows, spec)
            self._clock.features_s += time.perf_counter() - started
        started = time.perf_counter()
        vectors = self._inner.embed(windows)
        self._clock.embed_s += time.perf_counter() - started
        return vectors


class TimedCatalog:
    """The real catalog, with its searches timed and counted."""

    def __init__(self, inner: Catalog, clock: StageClock) -> None:
        self._inner = inner
        self._clock = clock

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        started = time.perf_counter()
        hits = self._inner.search(vectors, top_k)
        self._clock.search_s += time.perf_counter() - started
        self._clock.requests += 1
        self._clock.vectors += int(vectors.shape[0])
        return hits

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]:
        return self._inner.get_tracks(track_ids)

    def tracks(self) -> list[Track]:
        return self._inner.tracks()

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        started = time.perf_counter()
        found = self._inner.references(spans)
        self._clock.search_s += time.perf_counter() - started
        return found


def stage_breakdown(config: Config, queries: Sequence[Query]) -> dict[str, dict[str, float]]:
    """Per length: mean milliseconds per file in each stage (in this process, warm)."""
    from tunetrace.identify import Recognizer
    from tunetrace.store import open_catalog

    encoder = create_encoder(config.encoder, config.data_dir)
    rate = encoder.info.sample_rate
    clocks: dict[float, StageClock] = {}
    with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
        for q in queries[:WARMUP_FILES]:  # warm caches and lazy imports
            Recognizer(encoder, store, config.matcher).identify(decode_file(Path(q.path), rate))
        for q in queries:
            clock = clocks.setdefault(q.length_s, StageClock())
            recognizer = Recognizer(
                TimedEncoder(encoder, clock), TimedCatalog(store, clock), config.matcher,
                batch_size=config.encoder.batch_size,
            )
            started = time.perf_counter()
            audio = decode_file(Path(q.path), rate, max_seconds=config.matcher.max_query_s)
            decoded = time.perf_counter()
            recognizer.identify(audio)
            done = time.perf_counter()
            clock.decode_s += decoded - started
            clock.identify_s += done - decoded
            clock.files += 1
            clock.per_file_s.append(done - started)
    return {f"{length:g}s": clock.row() for length, clock in sorted(clocks.items())}


def search_floor(
    config: Config, counts: Sequence[int] = (1, 9, 17, 33, 73), repeats: int = 7,
) -> dict[str, float]:
    """Milliseconds of one search request carrying ``n`` random unit vectors (median of ``repeats``).

    The catalog's own cost per query vector (Milvus Lite's exact search plus pymilvus decoding the
    answer), which no change on our side of the request removes.
    """
    from tunetrace.store import open_catalog

    encoder = create_encoder(config.encoder, config.data_dir)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((max(counts), encoder.info.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    floor: dict[str, float] = {}
    with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
        store.search(vectors[:4], config.matcher.top_k)
        for n in counts:
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                store.search(vectors[:n], config.matcher.top_k)
                timings.append(time.perf_counter() - started)
            floor[f"{n}_vectors_ms"] = 1000 * float(np.median(timings))
    return floor


# -- cold start -------------------------------------------------------------------------------------


def cold_start(config: Path | None, one_file: str, runs: int) -> dict[str, list[float]]:
    """Wall seconds of fresh ``identify FILE`` and ``identify --help`` processes."""
    timings: dict[str, list[float]] = {"identify_one_file_s": [], "help_s": []}
    for _ in range(runs):
        for key, args in (("identify_one_file_s", [one_file]), ("help_s", ["--help"])):
            started = time.perf_counter()
            result = subprocess.run(
                [*_command(config), *args], capture_output=True, text=True, check=False, timeout=300,
            )
            timings[key].append(round(time.perf_counter() - started, 3))
            if result.returncode != 0:
                raise SystemExit(f"error: {' '.join(args)}: exit {result.returncode}: {result.stderr[-800:]}")
    return timings


# -- report -----------------------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, float]:
    data = np.asarray(values, dtype=np.float64) * 1000.0
    return {
        "n": float(data.size), "median_ms": float(np.median(data)), "p95_ms": float(np.percentile(data, 95)),
        "min_ms": float(np.min(data)), "max_ms": float(np.max(data)),
    }


def _truth(queries: Sequence[Query]) -> dict[str, int]:
    """Source path -> the track id its catalog entry has (derived from its audio, as ingest does).

    Not read from the catalog: an embedded catalog stays locked by the process that opened it,
    and the ``identify`` calls below must open it themselves.
    """
    from tunetrace.catalog.scan import content_hash
    from tunetrace.store import track_id_for

    return {source: track_id_for(content_hash(Path(source))) for source in {q.source for q in queries}}


@contextmanager
def _section(title: str) -> Iterator[None]:
    print(f"## {title}", flush=True)
    yield
    print(flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunetrace.evaluation.oneshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", type=Path, default=None)
    parser.add_argument("--catalog", type=Path, required=True,
                        help="the ingested folder the queries are cut from")
    parser.add_argument("--queries", type=Path, required=True, help="folder for the query files (re-used)")
    parser.add_argument("--lengths", default="3,5,10", help="excerpt lengths in seconds (default 3,5,10)")
    parser.add_argument("--per-cell", type=int, default=20, help="excerpts per (length, condition)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--batch-files", type=int, default=1,
                        help="identify --batch-files for the warm call (default 1: one file at a time)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: warm,cold,stages,search")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    config = load_config(args.config)
    lengths = tuple(float(v) for v in args.lengths.split(","))
    queries = make_queries(args.catalog, args.queries, lengths, args.per_cell, args.seed)
    truth = _truth(queries)
    figures: dict[str, object] = {
        "load_average": os.getloadavg(), "queries": len(queries), "cpus": os.cpu_count(),
        "matcher": config.matcher.model_dump(mode="json"),
    }
    if "warm" not in skip:
        with _section(f"warm latency: one `identify --json --batch-files {args.batch_files}` call over "
                      "all files (latency_s per file)"):
            records, wall_per_file = warm_batch(args.config, queries, args.batch_files)
            warm: dict[str, object] = {"wall_per_file_ms": 1000 * wall_per_file}
            for length in lengths:
                for condition in CONDITIONS:
                    cell = [(q, r) for q, r in zip(queries, records, strict=True)
                            if q.length_s == length and q.condition == condition]
                    stats = percentiles([float(str(r["latency_s"])) for _, r in cell])
                    stats["right"] = sum(right_answer(q, r, truth) for q, r in cell) / max(1, len(cell))
                    warm[f"{length:g}s/{condition}"] = stats
                    print(f"{length:>4g} s {condition:<6} median {stats['median_ms']:6.1f} ms  p95 "
                          f"{stats['p95_ms']:6.1f} ms  (n {stats['n']:.0f}, right {stats['right']:.0%})")
            print(f"call wall time per file: {1000 * wall_per_file:.1f} ms (process start included)")
            figures["warm"] = warm
    if "cold" not in skip:
        with _section(f"cold start: fresh processes, {args.cold_runs} runs each (wall s)"):
            one = next(q.path for q in queries if q.condition == "clean")
            cold = cold_start(args.config, one, args.cold_runs)
            for key, values in cold.items():
                print(f"{key}: median {np.median(values):.2f} s, runs {values}")
            figures["cold"] = cold
    if "stages" not in skip:
        with _section("stages: mean ms per file, in-process, warm"):
            stages = stage_breakdown(config, queries)
            for name, row in stages.items():
                print(f"{name:>4}: " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()))
            figures["stages"] = stages
    if "search" not in skip:
        with _section("search floor: one request of n random query vectors (median ms)"):
            floor = search_floor(config)
            print("  ".join(f"{k} {v:.1f}" for k, v in floor.items()))
            figures["search_floor"] = floor
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
