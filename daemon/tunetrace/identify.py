"""One-shot recognition: audio in, the catalog track, its position and a confidence out.

A ``Recognizer`` holds the encoder, the store and the catalog shape, opened once, so that many
queries in one call are cheap.  Speed changes are handled by also trying the query resampled at
the configured ratios; the best time-consistent answer wins.  Its speed is measured from how the
match drifts against the catalog (``voting.speed``, queries of 8 s or more), times the ratio tried.

Memory is bounded whatever the query's length: windows are cut as views of the audio and embedded
and searched ``batch_size`` at a time, so only the hits (a few bytes per window) accumulate; the
caller decodes at most ``matcher.max_query_s`` seconds.  Silent windows (below
``matcher.silence_threshold_dbfs``) are neither embedded nor searched, as on the live path: silence
is not music, and a silent catalog track would otherwise "match" every silent query.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tunetrace.audio.resample import speed_change
from tunetrace.audio.windows import WindowSpec
from tunetrace.config import MatcherConfig
from tunetrace.encoders.base import Encoder
from tunetrace.store import Catalog, CatalogShape, Hit, Track, catalog_shape
from tunetrace.voting import Candidate, VotingParams, decisive, vote
from tunetrace.voting.speed import measured_speed
from tunetrace.voting.verify import reference_span, verify_all

_CONTRAST_CANDIDATES = 8
"""Candidates ranked per query: enough to find the best track other than the winner."""


NoMatchReason = Literal["silent", "too_short"]


@dataclass(frozen=True)
class Identification:
    """The answer for one query. ``track`` is ``None`` for an honest "no match"."""

    track: Track | None
    offset_s: float
    """Where in the track the query starts (seconds)."""
    confidence: float
    speed_ratio: float
    aligned_windows: int
    query_windows: int
    best_candidate: Candidate | None
    """The strongest candidate even when it did not pass the threshold (for diagnostics)."""
    note: NoMatchReason | None = None
    """Why there could be no answer at all: ``silent`` or ``too_short`` (``None`` otherwise)."""
    speed_measured: bool = False
    """``speed_ratio`` was measured from the match's drift (else it is the speed ratio tried)."""
    verified: bool = False
    """The answer was scored on its aligned catalog windows (``voting.verify``), not hits alone;
    it is then judged by ``matcher.min_confidence`` whatever the catalog's size."""

    @property
    def matched(self) -> bool:
        return self.track is not None


@dataclass(frozen=True)
class _QueryWindows:
    views: np.ndarray
    """Every window of the query at the query hop (a strided view of its audio)."""
    starts: np.ndarray
    """Start (samples) of each audible window: the ones embedded and searched."""


_Searched = tuple[list[list[Hit]], np.ndarray, np.ndarray]
"""One query's search: each audible window's neighbours, start times (s) and vectors."""


@dataclass(frozen=True)
class _Voted:
    """One query's vote at one speed ratio: its search, ranked candidates and winner on hits alone."""

    ratio: float
    searched: _Searched
    ranked: list[Candidate]
    winner: Candidate


def _span_s(query_times_s: np.ndarray) -> float:
    return float(query_times_s[-1] - query_times_s[0])


class Recognizer:
    def __init__(
        self, encoder: Encoder, store: Catalog, config: MatcherConfig, *, batch_size: int = 64,
    ) -> None:
        self._encoder = encoder
        self._store = store
        self._config = config
        self._batch_size = batch_size
        info = encoder.info
        self._query_spec = info.window_spec.with_hop(config.query_hop(info.hop_s))
        self._params = VotingParams.from_config(config, info.hop_s)
        self._tracks: dict[int, Track] = {}
        self._shape = self._read_tracks()
        self._silence_rms = 10.0 ** (config.silence_threshold_dbfs / 20.0)
        # Verification compares inner products with a similarity floor: only for IP catalogs.
        self._verify_ip = info.metric == "IP"

    @property
    def shape(self) -> CatalogShape:
        return self._shape

    def refresh(self) -> None:
        """Re-read the catalog's track list (after an ingest by another process)."""
        self._shape = self._read_tracks()

    def _read_tracks(self) -> CatalogShape:
        """The track list, read once: it feeds the chance correction and names the answers, so an
        answer costs no second request to the catalog."""
        tracks = self._store.tracks()
        self._tracks = {t.track_id: t for t in tracks}
        return catalog_shape(tracks)

    def identify(self, audio: np.ndarray) -> Identification:
        """``audio``: mono float32 at the encoder's sample rate."""
        return self.identify_many([audio])[0]

    def identify_many(self, audios: Sequence[np.ndarray]) -> list[Identification]:
        """Answer several queries at once: their windows are embedded together and sent to the
        catalog in one search request per speed ratio, then voted on per query; the queries that
        ``matcher.verify_queries`` selects are then verified at their best ratio, their catalog
        windows read in one request for the whole batch.

        One request per batch instead of one per ``batch_size`` windows per query: a search
        request costs a round trip to Milvus (Lite's runs in another process) whatever it carries.
        """
        best: list[_Voted | None] = [None] * len(audios)
        audible = [False] * len(audios)
        for ratio in self._config.speed_ratios:
            # Audio played ``ratio`` times fast is slowed back down by resampling with 1/ratio.
            queries = [self._windows(speed_change(audio, 1.0 / ratio)) for audio in audios]
            for index, searched in enumerate(self._search_all(queries)):
                hits, times_s, _ = searched
                if not hits:
                    continue
                audible[index] = True
                ranked = vote(hits, times_s, self._params, self._shape, max_candidates=_CONTRAST_CANDIDATES)
                winner = decisive(ranked, _span_s(times_s), self._params.catalog_hop_s)
                if winner is None:
                    continue
                current = best[index]
                if current is None or self._rank(winner) > self._rank(current.winner):
                    best[index] = _Voted(ratio, searched, ranked, winner)
        rescored = self._verified(best)
        answers: list[Identification] = []
        for index, (audio, voted) in enumerate(zip(audios, best, strict=True)):
            if audio.size < self._query_spec.window_samples:
                answers.append(Identification(None, 0.0, 0.0, 1.0, 0, 0, None, "too_short"))
            elif not audible[index]:
                answers.append(Identification(None, 0.0, 0.0, 1.0, 0, 0, None, "silent"))
            elif voted is None:
                answers.append(self._decide(None, verified=False))
            else:
                winner = rescored.get(index, voted.winner)
                hits, times_s, _ = voted.searched
                drift = measured_speed(hits, times_s, winner, self._params)
                candidate = replace(winner, speed_ratio=voted.ratio * (drift or 1.0))
                answer = self._decide(candidate, verified=index in rescored)
                answers.append(replace(answer, speed_measured=drift is not None))
        return answers

    def _passes(self, candidate: Candidate, *, verified: bool) -> bool:
        """Whether ``candidate`` is an answer: confident enough (on hits alone or verified) and
        with enough windows in time."""
        return (
            candidate.confidence >= self.min_confidence(verified)
            and candidate.aligned_windows >= self._config.min_aligned_windows
        )

    def _rank(self, winner: Candidate) -> tuple[bool, float]:
        """Across speed ratios: an answer before a refusal, then the higher confidence."""
        return self._passes(winner, verified=False), winner.confidence

    def _unsure(self, winner: Candidate) -> bool:
        """Hits alone leave this query unanswered, yet its best candidate has enough windows in
        time to be an answer: what an approximate index loses (a true match's neighbours crowded
        out of the top-k), where chance candidates rarely reach ``min_aligned_windows``."""
        return (
            winner.confidence < self.min_confidence()
            and winner.aligned_windows >= self._config.min_aligned_windows
        )

    def _verified(self, best: Sequence[_Voted | None]) -> dict[int, Candidate]:
        """The winners of the queries ``matcher.verify_queries`` selects, after their leading
        candidates were scored on all their aligned catalog windows (``voting.verify``); their
        windows are read in one request for the whole batch, as the search."""
        count = self._verify_count()
        if count == 0:
            return {}
        chosen = {
            index: voted for index, voted in enumerate(best)
            if voted is not None and (self._config.verify_queries == "all" or self._unsure(voted.winner))
        }
        if not chosen:
            return {}
        spans = {
            index: [reference_span(c, voted.searched[1], self._params) for c in voted.ranked[:count]]
            for index, voted in chosen.items()
        }
        references = self._store.references([span for query_spans in spans.values() for span in query_spans])
        floor = self._config.verify_min_similarity
        winners: dict[int, Candidate] = {}
        first = 0
        for index, voted in chosen.items():
            _, times_s, vectors = voted.searched
            mine = references[first : first + len(spans[index])]
            first += len(spans[index])
            ranked = verify_all(voted.ranked, mine, vectors, times_s, self._params, floor)
            winner = decisive(ranked, _span_s(times_s), self._params.catalog_hop_s)
            winners[index] = winner if winner is not None else voted.winner
        return winners

    def _windows(self, audio: np.ndarray) -> _QueryWindows:
        """The audible windows of one query (views into ``audio``, nothing copied yet)."""
        spec: WindowSpec = self._query_spec
        if audio.size < spec.window_samples:
            return _QueryWindows(np.zeros((0, spec.window_samples), np.float32), np.zeros(0, np.int64))
        audio = np.asarray(audio, dtype=np.float32)
        views = sliding_window_view(audio, spec.window_samples)[:: spec.hop_samples]
        starts = np.arange(views.shape[0], dtype=np.int64) * spec.hop_samples
        # Every window's RMS from one running sum of squares: O(samples), not O(windows x window).
        energy = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
        mean_square = (energy[starts + spec.window_samples] - energy[starts]) / spec.window_samples
        audible = np.flatnonzero(np.sqrt(np.maximum(mean_square, 0.0)) >= self._silence_rms)
        return _QueryWindows(views, starts[audible])

    def _search_all(self, queries: Sequence[_QueryWindows]) -> list[_Searched]:
        """Neighbours, start times (s) and vectors of every audible window of every query.

        Windows are copied and embedded ``batch_size`` at a time (the query's memory stays
        bounded), then all vectors go to the catalog in one request.
        """
        spec = self._query_spec
        if not any(q.starts.size for q in queries):
            return [([], np.zeros(0), np.zeros((0, 0), np.float32)) for _ in queries]
        vectors = np.concatenate(list(self._embedded(queries)))
        hits = self._store.search(vectors, self._config.top_k)
        answers: list[_Searched] = []
        first = 0
        for q in queries:
            count = q.starts.size
            answers.append(
                (hits[first : first + count], q.starts / spec.sample_rate, vectors[first : first + count])
            )
            first += count
        return answers

    def _embedded(self, queries: Sequence[_QueryWindows]) -> Iterator[np.ndarray]:
        """The vectors of every audible window, in order, ``batch_size`` windows per encoder call."""
        hop = self._query_spec.hop_samples
        pending: list[np.ndarray] = []
        count = 0
        for q in queries:
            indices = q.starts // hop
            for first in range(0, indices.size, self._batch_size):
                piece = q.views[indices[first : first + self._batch_size]]  # a copy of these windows only
                pending.append(piece)
                count += piece.shape[0]
                while count >= self._batch_size:
                    batch = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    yield self._encoder.embed(batch[: self._batch_size])
                    rest = batch[self._batch_size :]
                    pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]
        if count:
            yield self._encoder.embed(np.concatenate(pending) if len(pending) > 1 else pending[0])

    def _track(self, track_id: int) -> Track | None:
        known = self._tracks.get(track_id)
        return known if known is not None else self._store.get_tracks([track_id]).get(track_id)

    def _verify_count(self) -> int:
        """Leading candidates to verify: ``verify_candidates`` in a catalog large enough to need it."""
        large = self._shape.total_vectors >= self._config.verify_from_vectors
        return self._config.verify_candidates if self._verify_ip and large else 0

    def min_confidence(self, verified: bool = False) -> float:
        """The no-match threshold for this catalog's size, for an answer on hits alone or verified.

        On hits alone the chance margin shrinks as the catalog grows (the runner-up is closer to a
        chance winner), so a large catalog has its own, lower threshold. Verified answers keep
        ``min_confidence``: verification lifts the hold-out's chance scores back up.
        """
        large = self._shape.total_vectors >= self._config.large_catalog_vectors
        if large and not verified:
            return self._config.min_confidence_large
        return self._config.min_confidence

    def verifies(self) -> bool:
        """Whether this catalog's answers can be verified (``matcher.verify_*``, catalog size)."""
        return self._verify_count() > 0

    def _decide(self, best: Candidate | None, *, verified: bool) -> Identification:
        if best is None:
            return Identification(None, 0.0, 0.0, 1.0, 0, 0, None)
        track = self._track(best.track_id) if self._passes(best, verified=verified) else None
        if track is None:
            return Identification(
                None, 0.0, best.confidence, best.speed_ratio, best.aligned_windows,
                best.query_windows, best, verified=verified,
            )
        return Identification(
            track, max(0.0, best.alignment_s), best.confidence, best.speed_ratio,
            best.aligned_windows, best.query_windows, best, verified=verified,
        )
