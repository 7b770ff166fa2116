"""Seeded evaluation queries: which track, where, how long, under which condition.

The whole plan is drawn before any audio is decoded, from track durations alone, so a run is
reproducible from its seed, each file is decoded exactly once, and only the cut segments stay in
memory.  Every (set, condition, length) cell draws from its own generator, seeded by the run seed
and the cell's name, so adding a condition or a length leaves the other cells' queries unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tunetrace.evaluation.conditions import Condition

PREROLL_S = 1.0
"""Audio before the excerpt that is degraded with it and then dropped: reverb tails, codec and
filter start-up then look as they would in the middle of a broadcast."""
QUIET_RMS = 10 ** (-50 / 20)
"""Excerpts quieter than -50 dBFS are redrawn: silence identifies nothing, on air or here."""
MAX_DRAWS = 20
_END_MARGIN_S = 0.05
"""Kept clear of the end: probed durations and decoded lengths can differ by a few milliseconds."""


@dataclass(frozen=True)
class SourceTrack:
    """One evaluation file, decoded at the encoder's rate."""

    path: Path
    duration_s: float
    in_catalog: bool


@dataclass(frozen=True)
class Excerpt:
    """One query: ``length_s`` seconds as heard, starting ``start_s`` into ``source``."""

    query_id: int
    in_catalog: bool
    condition: str
    length_s: float
    source: int
    """Index into the run's track list."""
    start_s: float
    """Ground truth: the track position at the start of the query (in the original's time)."""
    source_length_s: float
    """Audio cut from the source: ``length_s`` times the condition's speed ratio."""
    interferer: int | None
    """Track whose music is mixed in (``music`` conditions), never ``source``."""
    interferer_start_s: float
    seed: int
    """Seeds the excerpt's own randomness (noise, impulse response)."""


def cell_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator for one cell of the plan, independent of every other cell."""
    keys = [zlib.crc32(name.encode()) for name in names]
    return np.random.default_rng([seed, *keys])


def plan_excerpts(
    tracks: Sequence[SourceTrack],
    conditions: Sequence[Condition],
    lengths_s: Sequence[float],
    per_cell: int,
    seed: int,
    *,
    per_track: bool = False,
) -> list[Excerpt]:
    """``per_cell`` queries for each (catalog/hold-out, condition, length), spread over the tracks.

    Tracks are used in a shuffled round robin, so every track contributes about equally whatever
    its length (tracks too short for the excerpt and its pre-roll sit that cell out); starts are
    uniform over the positions where the excerpt fits.
    Interfering music comes from the hold-out tracks (never the query's own track).  With
    ``per_track``, ``per_cell`` counts excerpts per track instead, so a cell holds ``per_cell``
    times the number of tracks that fit.
    """
    holdout = [i for i, t in enumerate(tracks) if not t.in_catalog]
    excerpts: list[Excerpt] = []
    for in_catalog in (True, False):
        pool = [i for i, t in enumerate(tracks) if t.in_catalog == in_catalog]
        if not pool:
            continue
        for condition in conditions:
            for length_s in lengths_s:
                rng = cell_rng(seed, "catalog" if in_catalog else "holdout", condition.name, f"{length_s:g}")
                needed_s = length_s * condition.speed_ratio
                order = [int(i) for i in rng.permutation(pool) if _start_fits(tracks[i], needed_s)]
                count = per_cell * len(order) if per_track else (per_cell if order else 0)
                for n in range(count):
                    source = order[n % len(order)]
                    start_s = _start(rng, tracks[source].duration_s, needed_s)
                    assert start_s is not None
                    interferer, interferer_start_s = None, 0.0
                    if condition.needs_interferer:
                        others = [i for i in holdout if i != source]
                        if not others:
                            raise ValueError(f"{condition.name} needs a second hold-out track to mix in")
                        interferer = int(rng.choice(others))
                        interferer_start_s = _start(rng, tracks[interferer].duration_s, length_s) or 0.0
                    excerpts.append(Excerpt(
                        query_id=len(excerpts), in_catalog=in_catalog, condition=condition.name,
                        length_s=length_s, source=source, start_s=start_s, source_length_s=needed_s,
                        interferer=interferer, interferer_start_s=interferer_start_s,
                        seed=int(rng.integers(2**31)),
                    ))
    return excerpts


def _start_fits(track: SourceTrack, needed_s: float) -> bool:
    """Whether the track is long enough for the pre-roll and an excerpt of ``needed_s``."""
    return track.duration_s - needed_s - _END_MARGIN_S >= PREROLL_S


def _start(rng: np.random.Generator, duration_s: float, needed_s: float) -> float | None:
    """A start leaving room for the pre-roll before and the excerpt after; ``None`` if none fits."""
    latest_s = duration_s - needed_s - _END_MARGIN_S
    if latest_s < PREROLL_S:
        return None
    return round(float(rng.uniform(PREROLL_S, latest_s)), 3)


def is_quiet(audio: np.ndarray) -> bool:
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < QUIET_RMS


def redraw_quiet(excerpt: Excerpt, track: np.ndarray, sample_rate: int, seed: int) -> Excerpt:
    """Move an excerpt that landed on near-silence to a new start in the same track (seeded)."""
    rng = cell_rng(seed, "redraw", str(excerpt.query_id))
    current = excerpt
    for _ in range(MAX_DRAWS):
        if not is_quiet(cut(track, sample_rate, current.start_s, current.source_length_s)):
            break
        start_s = _start(rng, track.size / sample_rate, current.source_length_s)
        if start_s is None:
            break
        current = replace(current, start_s=start_s)
    return current


def cut(audio: np.ndarray, sample_rate: int, start_s: float, length_s: float) -> np.ndarray:
    """``length_s`` seconds from ``start_s`` (zero-padded past the end)."""
    first = round(start_s * sample_rate)
    n = round(length_s * sample_rate)
    segment = audio[first : first + n]
    if segment.size < n:
        segment = np.concatenate([segment, np.zeros(n - segment.size, np.float32)])
    return segment
