"""A quick retrieval check on the never-trained-on validation catalog (warzone2100).

Every validation track is embedded at the catalog hop; random 5 s snippets (starting anywhere,
not on the hop grid) are degraded, embedded at half the hop, and identified by brute-force
nearest neighbours plus the package's own time-consistent ``matcher.vote``. A query counts as a
hit when the best candidate is the right track and passes the default matcher thresholds.
Snippets of music not in the catalog measure false positives. This is a development check; the
full ``tunetrace eval`` (Milvus, real pipeline) is the reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunetrace.audio.resample import speed_change
from tunetrace.audio.windows import frame
from tunetrace.config import EncoderConfig, MatcherConfig, parse_config
from tunetrace.encoders import create_encoder
from tunetrace.encoders.base import Encoder
from tunetrace.evaluation.degrade import (
    mix_at_snr,
    reverb,
    synthetic_ir,
    telephone_band,
    white_noise_samples,
)
from tunetrace.store import CatalogShape, Hit
from tunetrace.train.config import TrainConfig
from tunetrace.train.data import AudioPool, CodecSpec, codec_roundtrip, load_pool
from tunetrace.voting import VotingParams, decisive, vote

log = logging.getLogger(__name__)
SAMPLE_RATE = 8000
EMBED_BATCH = 64
"""Windows per encoder call: small batches stay in cache and run ~2x faster than 512 on CPU."""


@dataclass(frozen=True)
class Catalog:
    vectors: np.ndarray
    track: np.ndarray
    offset_s: np.ndarray
    shape: CatalogShape


Degrade = Callable[[np.ndarray, np.random.Generator, AudioPool], np.ndarray]


def _other_music(n: int, rng: np.random.Generator, others: AudioPool) -> np.ndarray:
    track = others.tracks[int(rng.integers(len(others.tracks)))]
    start = int(rng.integers(0, max(1, track.size - n)))
    return track[start : start + n]


CONDITIONS: dict[str, Degrade] = {
    "clean": lambda x, rng, o: x,
    "white_10db": lambda x, rng, o: mix_at_snr(x, white_noise_samples(x.size, rng), 10.0),
    "white_0db": lambda x, rng, o: mix_at_snr(x, white_noise_samples(x.size, rng), 0.0),
    "music_5db": lambda x, rng, o: mix_at_snr(x, _other_music(x.size, rng, o), 5.0),
    "mp3_64k": lambda x, rng, o: codec_roundtrip(x, SAMPLE_RATE, CodecSpec("libmp3lame", 64)),
    "speed_0.97": lambda x, rng, o: speed_change(x, 0.97),
    "speed_1.03": lambda x, rng, o: speed_change(x, 1.03),
    "reverb": lambda x, rng, o: reverb(x, synthetic_ir(0.7, SAMPLE_RATE, rng, 0.8)),
    "telephone": lambda x, rng, o: telephone_band(x, SAMPLE_RATE),
}


def embed_all(encoder: Encoder, windows: np.ndarray) -> np.ndarray:
    parts = [encoder.embed(windows[i : i + EMBED_BATCH]) for i in range(0, len(windows), EMBED_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.info.dimension), np.float32)


def build_catalog(encoder: Encoder, pool: AudioPool) -> Catalog:
    spec = encoder.info.window_spec
    vectors, tracks, offsets = [], [], []
    for index, audio in enumerate(pool.tracks):
        windows, starts = frame(audio, spec)
        vectors.append(embed_all(encoder, windows))
        tracks.append(np.full(len(starts), index))
        offsets.append(starts / spec.sample_rate)
    track = np.concatenate(tracks)
    counts = np.bincount(track, minlength=len(pool.tracks))
    shape = CatalogShape(int(track.size), {i: int(c) for i, c in enumerate(counts)})
    return Catalog(np.concatenate(vectors), track, np.concatenate(offsets), shape)


CONTRAST_CANDIDATES = 8
"""Candidates ``decisive`` compares, as in ``tunetrace.identify``."""


@dataclass(frozen=True)
class Answer:
    track: int
    """Best candidate's track index, -1 when nothing voted."""
    confidence: float
    aligned_windows: int

    def accepted(self, matcher: MatcherConfig, min_confidence: float | None = None) -> bool:
        threshold = matcher.min_confidence if min_confidence is None else min_confidence
        return self.confidence >= threshold and self.aligned_windows >= matcher.min_aligned_windows


CONFIDENCE_SWEEP = (0.3, 0.4, 0.5)
"""Extra ``min_confidence`` values reported, to choose an operating point per encoder."""


def identify(encoder: Encoder, catalog: Catalog, snippet: np.ndarray, matcher: MatcherConfig) -> Answer:
    """The matcher's best answer for ``snippet``, mirroring ``Recognizer.identify``.

    Same query hop (``matcher.query_hop``), voting, ``decisive`` margin and
    thresholds; only the nearest-neighbour search is brute force instead of Milvus.
    """
    hop_s = encoder.info.hop_s
    windows, starts = frame(snippet, encoder.info.window_spec.with_hop(matcher.query_hop(hop_s)))
    queries = encoder.embed(windows) if len(windows) <= EMBED_BATCH else embed_all(encoder, windows)
    similarity = queries @ catalog.vectors.T
    k = min(matcher.top_k, similarity.shape[1])
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    hits = [
        [Hit(i, int(catalog.track[j]), float(catalog.offset_s[j]), float(similarity[i, j])) for j in row]
        for i, row in enumerate(top)
    ]
    times_s = starts / SAMPLE_RATE
    params = VotingParams.from_config(matcher, hop_s)
    ranked = vote(hits, times_s, params, catalog.shape, max_candidates=CONTRAST_CANDIDATES)
    best = decisive(ranked, float(times_s[-1] - times_s[0]), hop_s)
    if best is None:
        return Answer(-1, 0.0, 0)
    return Answer(best.track_id, best.confidence, best.aligned_windows)


def _snippet(pool: AudioPool, rng: np.random.Generator, n: int) -> tuple[int, np.ndarray]:
    index = int(rng.integers(len(pool.tracks)))
    audio = pool.tracks[index]
    start = int(rng.integers(0, max(1, audio.size - n)))
    return index, audio[start : start + n]


def evaluate(
    encoder: Encoder,
    catalog_pool: AudioPool,
    others: AudioPool,
    *,
    queries: int,
    snippet_s: float,
    conditions: list[str],
    seed: int = 7,
    matcher: MatcherConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Hit and false-positive rates per condition; ``matcher`` defaults to ``MatcherConfig()``."""
    matcher = matcher or MatcherConfig()
    started = time.monotonic()
    catalog = build_catalog(encoder, catalog_pool)
    log.info("catalog: %d windows in %.1f s", len(catalog.track), time.monotonic() - started)
    n = round(snippet_s * SAMPLE_RATE)
    results: dict[str, dict[str, float]] = {}
    for name in conditions:
        rng = np.random.default_rng([seed, sum(map(ord, name))])
        answers: list[tuple[int, Answer]] = []
        for _ in range(queries):
            truth, snippet = _snippet(catalog_pool, rng, n)
            answers.append(
                (truth, identify(encoder, catalog, CONDITIONS[name](snippet, rng, others), matcher))
            )
        results[name] = {
            "hit_rate": _share(answers, matcher, None),
            "top1": sum(a.track == t for t, a in answers) / queries,
            **{f"hit_rate@{c}": _share(answers, matcher, c) for c in CONFIDENCE_SWEEP},
            "queries": queries,
        }
        log.info("%s: %s", name, results[name])
    rng = np.random.default_rng([seed, 1])
    unknown = [(-2, identify(encoder, catalog, _snippet(others, rng, n)[1], matcher)) for _ in range(queries)]
    results["not_in_catalog"] = {
        "false_positive_rate": _share(unknown, matcher, None, any_track=True),
        **{f"false_positive_rate@{c}": _share(unknown, matcher, c, any_track=True) for c in CONFIDENCE_SWEEP},
        "queries": queries,
    }
    return results


def _share(
    answers: list[tuple[int, Answer]],
    matcher: MatcherConfig,
    min_confidence: float | None,
    any_track: bool = False,
) -> float:
    """Share of answers accepted at ``min_confidence`` (and naming the right track unless ``any_track``)."""
    good = sum(a.accepted(matcher, min_confidence) and (any_track or a.track == t) for t, a in answers)
    return good / max(1, len(answers))


def run_quickeval(config: TrainConfig, args: argparse.Namespace) -> int:
    cache = config.data.cache_dir
    catalog_pool = load_pool(cache, [s.name for s in config.data.val_sources])
    if config.data.holdout_sources:
        others = load_pool(cache, [s.name for s in config.data.holdout_sources])
    else:
        log.warning("data.holdout_sources is not set: interfering music and false positives come from "
                    "the training source %s, which the model has heard", config.data.train_sources[-1].name)
        others = load_pool(cache, [config.data.train_sources[-1].name])
    model_path: Path | None = args.model
    encoder = create_encoder(EncoderConfig(name=args.encoder, model_path=model_path, threads=1))
    conditions = args.conditions.split(",") if args.conditions else list(CONDITIONS)
    matcher = parse_config({"encoder": {"name": args.encoder}}).matcher  # the encoder's calibrated threshold
    results = evaluate(
        encoder, catalog_pool, others, queries=args.queries, snippet_s=args.snippet_s, conditions=conditions,
        matcher=matcher,
    )
    print(json.dumps({"encoder": encoder.info.encoder_id, "results": results}, indent=2))
    return 0


def measure_throughput(
    encoder: Encoder, *, n_windows: int = 2048, batch: int = 64, repeats: int = 3
) -> float:
    """Windows per second through ``encoder.embed`` (front end included), best of ``repeats``.

    The best run is reported because the machine is shared: the minimum time is the one least
    disturbed by other processes.
    """
    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((n_windows, encoder.info.window_spec.window_samples))).astype(
        np.float32
    )
    encoder.embed(windows[:batch])  # warm-up: onnxruntime allocates on the first run
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, n_windows, batch):
            encoder.embed(windows[i : i + batch])
        best = min(best, time.perf_counter() - started)
    return n_windows / best


def run_benchmark(args: argparse.Namespace) -> int:
    encoder = create_encoder(EncoderConfig(name=args.encoder, model_path=args.model, threads=args.threads))
    rate = measure_throughput(encoder, batch=args.batch)
    print(
        json.dumps(
            {
                "encoder": encoder.info.encoder_id,
                "threads": args.threads,
                "batch": args.batch,
                "windows_per_s": round(rate, 1),
            }
        )
    )
    return 0
