"""The live voter: sliding-horizon, time-consistent voting over a stream of windows.

``HorizonVoter`` is synchronous (run it in an executor, never on the event loop): it embeds a
batch of windows, searches the catalog, and votes over the sliding horizon once per decision, so a
batch of many windows (a fast backfill, or catching up) yields exactly the decisions real-time
processing would have made.  Silent windows are not embedded: they vote for nothing, which is
what lets a play end in silence.  Windows over an outage (audio the source never delivered) are
neither embedded nor kept: the decisions there say the source was down, in stream order, so the
tracker holds the play over the outage instead of counting it as lost evidence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from tunetrace.config import MatcherConfig, TrackerConfig
from tunetrace.encoders.base import Encoder
from tunetrace.ringbuffer import WindowBatch
from tunetrace.store.base import Catalog, CatalogShape, Hit
from tunetrace.tracker import Evidence, Observation
from tunetrace.voting.vote import Candidate, VotingParams, vote

_MAX_CANDIDATES = 3
_ALIGNMENTS_PER_TRACK = 6
"""Positions reported per track and decision. Looped music matches at several positions at once;
if the play's own position drops out of this list while the track is still heard, the tracker
takes the track as moved and corrects the position to a repeat (3 was too few for a looped
warzone piece: the e2e play ended 23 s, one loop, off its true position)."""
_PLAUSIBLE_WINDOWS = 2
_DISTINCT_ALIGNMENT_S = 1.0
"""Alignments of one track closer than this are the same position (within voting tolerance)."""
_EDGE_FRACTION = 0.25
"""Where a play's evidence starts and ends within its first and last supporting windows. A window
still matches with a quarter of it outside the track (the fingerprint is trained on windows shifted
by up to a quarter of their length), so the first supporting window starts up to a quarter window
before the track does and the last ends up to a quarter window after it; without this correction
every play started ~0.25 s early and ended ~0.2 s late on the benchmark streams."""
@dataclass(frozen=True)
class HorizonParams:
    sample_rate: int
    window_s: float
    horizon_s: float
    top_k: int
    silence_threshold_dbfs: float
    voting: VotingParams
    windows_per_decision: int = 1
    """Vote after every this many windows (voting costs more than a window's embedding)."""


class HorizonVoter:
    """Sliding-horizon voting over a stream of windows; not thread-safe (one per station)."""

    def __init__(
        self, encoder: Encoder, catalog: Catalog, shape: CatalogShape, params: HorizonParams,
    ) -> None:
        self._encoder = encoder
        self._catalog = catalog
        self._shape = shape
        self._params = params
        self._history: deque[tuple[float, list[Hit]]] = deque()
        self._since_decision = 0
        self._silence_rms = 10.0 ** (params.silence_threshold_dbfs / 20.0)

    def set_shape(self, shape: CatalogShape) -> None:
        """The catalog changed (tracks ingested or removed while running): vote with its new shape.

        A track missing from the shape scores nothing, so this is what makes a new track
        recognisable; the swap is one reference assignment, safe while ``process`` runs.
        """
        self._shape = shape

    def process(self, batch: WindowBatch) -> list[Observation]:
        """One observation per ``windows_per_decision`` windows, in stream order (blocking: call from
        an executor). Embeds and searches this batch alone; several stations share one embedding
        call and one search through ``voting.batcher.RecognitionBatcher`` instead."""
        if len(batch) == 0:
            return []
        audible = self.audible(batch)
        found: list[list[Hit]] = []
        if audible.size:
            vectors = self._encoder.embed(batch.windows[audible])
            found = self._catalog.search(vectors, self._params.top_k)
        return self.observe(batch, audible, found)

    @property
    def top_k(self) -> int:
        return self._params.top_k

    def audible(self, batch: WindowBatch) -> np.ndarray:
        """Rows of ``batch`` to embed and search: loud enough (silence votes for nothing) and not
        over an outage (audio the source never delivered)."""
        if len(batch) == 0:
            return np.zeros(0, np.int64)
        rms = np.sqrt(np.mean(np.square(batch.windows, dtype=np.float64), axis=1))
        return np.flatnonzero((rms >= self._silence_rms) & ~batch.outage_mask())

    def observe(self, batch: WindowBatch, audible: np.ndarray, found: list[list[Hit]]) -> list[Observation]:
        """Add a batch's hits to the horizon and vote: ``found[i]`` are the neighbours of row
        ``audible[i]`` (rows not in ``audible`` had none)."""
        hits: list[list[Hit]] = [[] for _ in range(len(batch))]
        for row, window_hits in zip(audible, found, strict=True):
            hits[int(row)] = window_hits
        rate = self._params.sample_rate
        observations = []
        outage = batch.outage_mask()
        for start_sample, window_hits, down in zip(batch.start_samples, hits, outage, strict=True):
            start_s = float(start_sample) / rate
            if not down:
                self._history.append((start_s, window_hits))
            oldest_s = start_s + self._params.window_s - self._params.horizon_s
            while self._history and self._history[0][0] < oldest_s:
                self._history.popleft()
            self._since_decision += 1
            if self._since_decision >= self._params.windows_per_decision:
                self._since_decision = 0
                stream_s = start_s + self._params.window_s
                observations.append(
                    Observation(stream_s, source_up=False) if down else Observation(stream_s, self._decide())
                )
        return observations

    def _decide(self) -> tuple[Evidence, ...]:
        times = np.array([t for t, _ in self._history])
        window_hits = self._plausible_hits()
        ranked = vote(window_hits, times, self._params.voting, self._shape, max_candidates=_MAX_CANDIDATES)
        evidence: list[Evidence] = []
        for candidate in ranked:
            evidence.extend(self._alignments(candidate))
        return tuple(evidence)

    def _plausible_hits(self) -> list[list[Hit]]:
        """The horizon's hits, without those at alignments that no two catalog windows agree on.

        Voting scores every track that appears among the neighbours, and most appear by chance at
        one catalog window; a track needs at least two distinct catalog windows at one alignment
        (to within a catalog hop) to reach any useful confidence, so hits at other alignments are
        dropped before voting (a 10-50x saving, same best alignments).
        The window count, which the chance correction uses, is unchanged.
        """
        hop_s = self._params.voting.catalog_hop_s
        windows_at: dict[tuple[int, int], set[int]] = {}
        for t, window_hits in self._history:
            for h in window_hits:
                key = (h.track_id, round((h.offset_s - t) / hop_s))
                windows_at.setdefault(key, set()).add(round(h.offset_s / hop_s))
        plausible: set[tuple[int, int]] = set()
        for (track_id, band), windows in windows_at.items():
            if len(windows | windows_at.get((track_id, band + 1), set())) >= _PLAUSIBLE_WINDOWS:
                plausible.update((track_id, b) for b in (band - 1, band, band + 1, band + 2))
        return [
            [h for h in window_hits if (h.track_id, round((h.offset_s - t) / hop_s)) in plausible]
            for t, window_hits in self._history
        ]

    def _alignments(self, candidate: Candidate) -> list[Evidence]:
        """The candidate's alignment plus the track's other well-supported alignments.

        Music repeats itself (choruses, loops), so one track can match the horizon at several
        positions; reporting them lets the tracker keep a play whose position is still supported
        instead of mistaking the repeat for a jump.  Each alignment gets the candidate's confidence
        scaled by its share of supporting windows, and where in the horizon that support lies.
        """
        voting = self._params.voting
        rows = [
            (t, h.offset_s - t) for t, window_hits in self._history for h in window_hits
            if h.track_id == candidate.track_id and h.similarity >= voting.min_similarity
        ]
        if not rows:
            return []
        data = np.array(rows, dtype=np.float64)
        times, alignments = data[:, 0], data[:, 1]
        time_ids = np.unique(times, return_inverse=True)[1]
        bands = np.unique(np.round(alignments / voting.catalog_hop_s)) * voting.catalog_hop_s
        band_of_pair, row_of_pair = np.nonzero(
            np.abs(alignments[None, :] - bands[:, None]) <= voting.offset_tolerance_s
        )
        heard = np.zeros((bands.size, int(time_ids.max()) + 1), dtype=bool)
        heard[band_of_pair, time_ids[row_of_pair]] = True
        by_support = np.argsort(-heard.sum(axis=1), kind="stable")
        centres = [candidate.alignment_s, *bands[by_support].tolist()]
        chosen: list[tuple[float, np.ndarray]] = []
        for centre in centres:
            if len(chosen) == _ALIGNMENTS_PER_TRACK:
                break
            if any(abs(centre - other) <= _DISTINCT_ALIGNMENT_S for other, _ in chosen):
                continue
            supporting = np.unique(times[np.abs(alignments - centre) <= voting.offset_tolerance_s])
            if supporting.size:
                chosen.append((centre, supporting))
        main = max(1, chosen[0][1].size) if chosen else 1
        window_s = self._params.window_s
        edge_s = _EDGE_FRACTION * window_s
        return [
            Evidence(
                candidate.track_id, centre, candidate.confidence * min(1.0, supporting.size / main),
                candidate.aligned_windows if i == 0 else int(supporting.size),
                first_aligned_s=float(supporting[0]) + edge_s,
                last_aligned_s=float(supporting[-1]) + window_s - edge_s,
                speed_ratio=candidate.speed_ratio,
            )
            for i, (centre, supporting) in enumerate(chosen)
        ]



def horizon_params(
    encoder: Encoder, matcher: MatcherConfig, tracker: TrackerConfig, silence_threshold_dbfs: float,
) -> HorizonParams:
    info = encoder.info
    return HorizonParams(
        sample_rate=info.sample_rate, window_s=info.window_s,
        horizon_s=max(tracker.horizon_s, info.window_s + tracker.window_hop_s),
        top_k=matcher.top_k, silence_threshold_dbfs=silence_threshold_dbfs,
        voting=VotingParams.from_config(matcher, info.hop_s),
        windows_per_decision=max(1, round(tracker.decision_interval_s / tracker.window_hop_s)),
    )
