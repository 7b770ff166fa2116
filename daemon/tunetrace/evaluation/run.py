"""``tunetrace eval``: ingest a catalog, query it with degraded excerpts, record every answer.

The order is chosen so that the expensive things happen once: the catalog is ingested (files
already in it are skipped), the whole query plan is drawn from durations, each file is decoded
once at the encoder's rate while its segments are cut, each condition's excerpts are rendered
together (one MP3 round trip for all of them), and one ``Recognizer`` answers every query.
The matcher's configuration is used exactly as loaded: thresholds are fixed before the run.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunetrace.audio.decode import decode_file, probe_tags
from tunetrace.catalog.ingest import FileOutcome, IngestSummary, ingest
from tunetrace.catalog.scan import content_hash, scan_paths
from tunetrace.config import Config, MatcherConfig
from tunetrace.encoders import create_encoder
from tunetrace.encoders.base import Encoder
from tunetrace.errors import DecodeError, TunetraceError
from tunetrace.evaluation.conditions import Condition
from tunetrace.evaluation.excerpts import (
    PREROLL_S,
    Excerpt,
    SourceTrack,
    cut,
    is_quiet,
    plan_excerpts,
    redraw_quiet,
)
from tunetrace.identify import Identification, Recognizer
from tunetrace.redact import redact_url
from tunetrace.store import open_catalog, track_id_for

if TYPE_CHECKING:
    from tunetrace.store.base import Catalog
    from tunetrace.store.milvus import CatalogStore

log = logging.getLogger(__name__)

WARMUP_QUERIES = 3
"""Queries answered (and not timed) before latency is measured, so caches and lazy imports are warm."""


@dataclass(frozen=True)
class EvalOptions:
    catalog_dir: Path
    holdout_dir: Path
    conditions: tuple[Condition, ...]
    lengths_s: tuple[float, ...]
    per_cell: int
    """Queries per (set, condition, length): catalog and hold-out each get this many."""
    seed: int
    per_track: bool = False
    """``per_cell`` counts queries per track (in each cell) instead."""
    progress: bool = True
    speech_dir: Path | None = None
    """Held-out recorded speech for the talk-over conditions (never the speech trained on)."""
    catalog_queries_only: bool = False
    """Identify only the catalog excerpts (the hold-out ones are planned, so query ids stay those
    of a full run): an exact reference at size only needs the catalog's answers."""


@dataclass(frozen=True)
class QueryResult:
    """One query and its answer: a row of ``results.csv``."""

    query_id: int
    in_catalog: bool
    condition: str
    length_s: float
    source_file: str
    truth_track_id: int | None
    truth_offset_s: float | None
    answer_track_id: int | None
    answer_title: str
    answer_offset_s: float | None
    confidence: float
    aligned_windows: int
    speed_ratio: float
    best_track_id: int | None
    """The strongest candidate, answered or not: what a lower threshold would have answered."""
    best_offset_s: float | None
    best_aligned_windows: int
    latency_s: float
    verified: bool = False
    """Answered after verification (``matcher.verify_*``), judged by ``verified_min_confidence``."""

    @property
    def right_track(self) -> bool:
        return self.answer_track_id is not None and self.answer_track_id == self.truth_track_id

    @property
    def offset_error_s(self) -> float | None:
        if not self.right_track or self.answer_offset_s is None or self.truth_offset_s is None:
            return None
        return self.answer_offset_s - self.truth_offset_s


@dataclass
class EvalRun:
    """Everything the report needs: the answers and how they were obtained."""

    results: list[QueryResult]
    options: EvalOptions
    encoder_id: str
    sample_rate: int
    matcher: MatcherConfig
    """The matcher as it answered: ``min_confidence`` is the threshold the catalog's size gave."""
    catalog_uri: str
    ingest: IngestSummary
    catalog_tracks: int
    holdout_tracks: int
    catalog_hours: float
    excluded: list[str] = field(default_factory=list)
    """Files left out, with the reason (failed to ingest, hold-out file found in the catalog...)."""
    wall_s: float = 0.0
    machine: dict[str, str] = field(default_factory=dict)
    threshold_from_size: bool = False
    """The catalog reached ``large_catalog_vectors``: its threshold was ``min_confidence_large``."""
    verified_min_confidence: float | None = None
    """The threshold of verified answers; ``None`` when this catalog verifies none."""


def _bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=not show, leave=False)


def machine_description() -> dict[str, str]:
    """What the timings depend on, written into the report beside them."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in load),
    }


def _ingest_catalog(
    files: Sequence[Path], encoder: Encoder, store: CatalogStore, config: Config, show: bool
) -> IngestSummary:
    bar = _bar(total=len(files), desc="ingest", show=show)

    def progress(outcome: FileOutcome) -> None:
        bar.update(1)

    try:
        return ingest(
            files, encoder, store, config.ingest, batch_size=config.encoder.batch_size, on_file=progress
        )
    finally:
        bar.close()


def _source_tracks(
    catalog_files: Sequence[Path], holdout_files: Sequence[Path], store: CatalogStore, excluded: list[str]
) -> tuple[list[SourceTrack], dict[int, int]]:
    """The evaluation's track list and, for catalog tracks, their catalog ids (index -> id)."""
    tracks: list[SourceTrack] = []
    truth: dict[int, int] = {}
    for in_catalog, files in ((True, catalog_files), (False, holdout_files)):
        for path in files:
            try:
                digest = content_hash(path)
                duration_s = probe_tags(path).duration_s
            except (DecodeError, OSError) as exc:
                excluded.append(f"{path}: {exc}")
                continue
            found = store.find_by_hash(digest)
            if in_catalog and found is None:
                excluded.append(f"{path}: not in the catalog (its ingest failed)")
                continue
            if not in_catalog and found is not None:
                excluded.append(f"{path}: hold-out file is in the catalog (as {found.title!r}); left out")
                continue
            if in_catalog:
                truth[len(tracks)] = track_id_for(digest)
            tracks.append(SourceTrack(path, duration_s, in_catalog))
    return tracks, truth


@dataclass
class _Segments:
    """Source audio (pre-roll included) per query, and interfering music where a condition needs it."""

    excerpts: dict[int, Excerpt] = field(default_factory=dict)
    source: dict[int, np.ndarray] = field(default_factory=dict)
    interference: dict[int, np.ndarray] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def _cut_segments(
    tracks: Sequence[SourceTrack], plan: Sequence[Excerpt], sample_rate: int, seed: int, show: bool
) -> _Segments:
    """Decode each needed file once and cut everything the plan wants from it."""
    by_source: dict[int, list[Excerpt]] = {}
    by_interferer: dict[int, list[Excerpt]] = {}
    for excerpt in plan:
        by_source.setdefault(excerpt.source, []).append(excerpt)
        if excerpt.interferer is not None:
            by_interferer.setdefault(excerpt.interferer, []).append(excerpt)
    segments = _Segments()
    needed = sorted(set(by_source) | set(by_interferer))
    preroll = round(PREROLL_S * sample_rate)
    for index in _bar(needed, desc="decode", show=show):
        try:
            audio = decode_file(tracks[index].path, sample_rate)
        except DecodeError as exc:
            segments.dropped.append(f"{exc} (its excerpts, and those mixing it in, were dropped)")
            continue
        quiet = 0
        for excerpt in by_source.get(index, []):
            moved = redraw_quiet(excerpt, audio, sample_rate, seed)
            if is_quiet(cut(audio, sample_rate, moved.start_s, moved.source_length_s)):
                quiet += 1  # the live daemon reports silence as silence; it never asks the catalog
                continue
            segments.excerpts[moved.query_id] = moved
            first = round(moved.start_s * sample_rate) - preroll
            segments.source[moved.query_id] = cut(
                audio, sample_rate, first / sample_rate, PREROLL_S + moved.source_length_s
            )
        for excerpt in by_interferer.get(index, []):
            segments.interference[excerpt.query_id] = cut(
                audio, sample_rate, excerpt.interferer_start_s, excerpt.length_s
            )
        if quiet:
            segments.dropped.append(
                f"{tracks[index].path}: {quiet} excerpt(s) dropped, no audible audio (below -50 dBFS) found"
            )
    for query_id in [q for q, e in segments.excerpts.items() if e.interferer is not None]:
        if query_id not in segments.interference:
            del segments.excerpts[query_id], segments.source[query_id]
    return segments


SPEECH_GAP_RANGE_S = (0.1, 0.4)
"""Pauses between a presenter's lines."""


class SpeechPool:
    """Held-out speech lines, decoded on first use; strung together into talk-over of any length."""

    def __init__(self, files: Sequence[Path], sample_rate: int) -> None:
        if not files:
            raise TunetraceError("the speech folder holds no audio files")
        self._files = list(files)
        self._rate = sample_rate
        self._decoded: dict[int, np.ndarray] = {}

    def _line(self, index: int) -> np.ndarray:
        if index not in self._decoded:
            try:
                self._decoded[index] = decode_file(self._files[index], self._rate)
            except DecodeError:
                self._decoded[index] = np.zeros(0, np.float32)
        return self._decoded[index]

    def talk_over(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``n_samples`` of speech: random lines with short pauses, starting mid-line."""
        parts: list[np.ndarray] = []
        total = 0
        while total < n_samples:
            line = self._line(int(rng.integers(len(self._files))))
            if not parts and line.size:
                line = line[int(rng.integers(line.size)) :]
            gap = np.zeros(round(float(rng.uniform(*SPEECH_GAP_RANGE_S)) * self._rate), np.float32)
            parts.extend([line, gap])
            total += line.size + gap.size
        return np.concatenate(parts)[:n_samples]


def _add_speech(segments: _Segments, conditions: Sequence[Condition], pool: SpeechPool | None,
                sample_rate: int) -> None:
    """Talk-over for every excerpt of a speech condition, seeded by the excerpt."""
    speech_conditions = {c.name for c in conditions if c.needs_speech}
    if not speech_conditions:
        return
    if pool is None:
        raise TunetraceError(
            f"{', '.join(sorted(speech_conditions))} need held-out speech: pass --speech DIR "
            "(`python -m tunetrace.evaluation.packages` unpacks fillets-ng-data-nl and prints its folder)"
        )
    for query_id, excerpt in segments.excerpts.items():
        if excerpt.condition in speech_conditions:
            rng = np.random.default_rng([excerpt.seed, 1])
            segments.interference[query_id] = pool.talk_over(round(excerpt.length_s * sample_rate), rng)


def _result(
    excerpt: Excerpt, track: SourceTrack, truth_id: int | None, answer: Identification, latency_s: float
) -> QueryResult:
    best = answer.best_candidate
    return QueryResult(
        query_id=excerpt.query_id,
        in_catalog=excerpt.in_catalog,
        condition=excerpt.condition,
        length_s=excerpt.length_s,
        source_file=track.path.name,
        truth_track_id=truth_id,
        truth_offset_s=excerpt.start_s if excerpt.in_catalog else None,
        answer_track_id=answer.track.track_id if answer.track else None,
        answer_title=answer.track.title if answer.track else "",
        answer_offset_s=answer.offset_s if answer.track else None,
        confidence=answer.confidence,
        aligned_windows=answer.aligned_windows,
        speed_ratio=answer.speed_ratio,
        best_track_id=best.track_id if best else None,
        best_offset_s=max(0.0, best.alignment_s) if best else None,
        best_aligned_windows=best.aligned_windows if best else 0,
        latency_s=latency_s,
        verified=answer.verified,
    )


def _queries(
    conditions: Sequence[Condition], segments: _Segments, sample_rate: int
) -> Iterable[tuple[Excerpt, np.ndarray]]:
    """Rendered queries, one condition at a time (so only one condition's audio is in memory)."""
    preroll = round(PREROLL_S * sample_rate)
    for condition in conditions:
        excerpts = sorted(
            (e for e in segments.excerpts.values() if e.condition == condition.name), key=lambda e: e.query_id
        )
        prepared = condition.prepare([segments.source[e.query_id] for e in excerpts], sample_rate)
        for excerpt, segment in zip(excerpts, prepared, strict=True):
            audio = condition.render(
                segment, preroll, round(excerpt.length_s * sample_rate), sample_rate,
                np.random.default_rng(excerpt.seed), segments.interference.get(excerpt.query_id),
            )
            yield excerpt, audio


def run_evaluation(
    config: Config, options: EvalOptions, search_with: Callable[[CatalogStore], Catalog] | None = None,
) -> EvalRun:
    """Ingest, plan, cut, degrade, identify; the report is written from the returned run.

    ``search_with`` answers the queries from another catalog built over the store (the exact
    reference of docs/scaling.md: brute force over the same vectors); by default the store itself.
    """
    started = time.monotonic()
    machine = machine_description()
    catalog_files = list(scan_paths([options.catalog_dir], config.ingest.extensions))
    holdout_files = list(scan_paths([options.holdout_dir], config.ingest.extensions))
    if not catalog_files:
        raise TunetraceError(f"{options.catalog_dir}: no audio files to build the catalog from")
    if len(holdout_files) < 2:
        raise TunetraceError(
            f"{options.holdout_dir}: needs at least two audio files (queries, and other music to mix in)"
        )
    encoder = create_encoder(config.encoder, config.data_dir)
    sample_rate = encoder.info.sample_rate
    excluded: list[str] = []
    with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=True) as store:
        summary = _ingest_catalog(catalog_files, encoder, store, config, options.progress)
        excluded.extend(f.reason for f in summary.failures)
        tracks, truth = _source_tracks(catalog_files, holdout_files, store, excluded)
        plan = plan_excerpts(tracks, options.conditions, options.lengths_s, options.per_cell, options.seed,
                             per_track=options.per_track)
        segments = _cut_segments(tracks, plan, sample_rate, options.seed, options.progress)
        speech = (
            SpeechPool(list(scan_paths([options.speech_dir], config.ingest.extensions)), sample_rate)
            if options.speech_dir is not None else None
        )
        _add_speech(segments, options.conditions, speech, sample_rate)
        excluded.extend(segments.dropped)
        if options.catalog_queries_only:
            segments.excerpts = {q: e for q, e in segments.excerpts.items() if e.in_catalog}
        recognizer = Recognizer(encoder, store if search_with is None else search_with(store), config.matcher)
        results: list[QueryResult] = []
        warm = 0
        bar = _bar(total=len(segments.excerpts), desc="identify", show=options.progress)
        for excerpt, audio in _queries(options.conditions, segments, sample_rate):
            while warm < WARMUP_QUERIES:
                recognizer.identify(audio)
                warm += 1
            began = time.perf_counter()
            answer = recognizer.identify(audio)
            latency_s = time.perf_counter() - began
            results.append(
                _result(excerpt, tracks[excerpt.source], truth.get(excerpt.source), answer, latency_s)
            )
            bar.update(1)
        bar.close()
        catalog_hours = sum(t.duration_s for t in store.tracks()) / 3600
        # The report states the threshold this catalog's size gave, not only the configured one.
        verifies_all = recognizer.verifies() and config.matcher.verify_queries == "all"
        threshold = recognizer.min_confidence(verified=verifies_all)
        threshold_from_size = threshold != config.matcher.min_confidence
        verified_threshold = recognizer.min_confidence(verified=True) if recognizer.verifies() else None
        matcher = config.matcher.model_copy(update={"min_confidence": threshold})
    results.sort(key=lambda r: r.query_id)
    return EvalRun(
        results=results, options=options, encoder_id=encoder.info.encoder_id, sample_rate=sample_rate,
        matcher=matcher, catalog_uri=redact_url(config.milvus_uri()), ingest=summary,
        catalog_tracks=sum(1 for t in tracks if t.in_catalog),
        holdout_tracks=sum(1 for t in tracks if not t.in_catalog), catalog_hours=catalog_hours,
        excluded=excluded, wall_s=time.monotonic() - started, machine=machine,
        threshold_from_size=threshold_from_size, verified_min_confidence=verified_threshold,
    )
