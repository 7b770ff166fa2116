"""Distractor recordings: catalogs of real size made from the free music installed here.

A catalog of 20,000 tracks cannot be downloaded on this machine, so the benchmark builds one from
the soundtrack packages it has.  Each distractor must be a genuinely different recording to a
listener and to the model, otherwise it would not test what a large catalog tests (chance matches
between unrelated music), so every piece of source audio in a distractor is transformed:

- ``shifted``: one source passage played 4-7 semitones higher or lower (tempo moves with pitch,
  as on a turntable: 26-50 % off speed, far outside the +-5 % a station plays);
- ``remix``: 2-4 s pieces of many source tracks, each shifted, strung together;
- ``mixture``: two shifted passages of different tracks, mixed.

Time reversal is not used: played backwards, music is still recognised as the original (the
fingerprint of a 1 s window is nearly invariant to it: ``check`` found 6 of 6 reversed excerpts
matched at confidence 0.47-0.77, and 1 of 18 even when also shifted by 4-7 semitones).

Everything is seeded by (seed, index), so distractor ``i`` is the same audio on every machine and
in every run, and a cache of its vectors stays valid.  ``check`` in ``evaluation.scale`` verifies
that a distractor's excerpts are not recognised as the tracks it was made from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tunetrace.audio.resample import speed_change

DistractorKind = Literal["shifted", "remix", "mixture"]
KINDS: tuple[DistractorKind, ...] = ("shifted", "remix", "mixture")

MIN_SHIFT_SEMITONES = 4
"""At 2 and 3 semitones (12 % and 19 % off speed) sustained passages were still recognised now and then
(2 of 36 excerpts at 3 semitones, confidence 0.27 against a threshold of 0.25)."""
MAX_SHIFT_SEMITONES = 7
DURATION_RANGE_S = (150.0, 270.0)
"""Distractor lengths: a typical broadcast recording (mean 3.5 min, the issue's sizing figure)."""
REMIX_PIECE_RANGE_S = (2.0, 4.0)
CROSSFADE_S = 0.01
"""Joins between remix pieces are faded so that no click marks them."""


@dataclass(frozen=True)
class SourceTrack:
    """Decoded source music at the encoder's rate (mono float32)."""

    name: str
    audio: np.ndarray


@dataclass(frozen=True)
class Distractor:
    index: int
    kind: DistractorKind
    sources: tuple[str, ...]
    """Names of the source tracks the audio was made from (for the check against them)."""
    audio: np.ndarray

    @property
    def title(self) -> str:
        return f"distractor-{self.index:06d}-{self.kind}"


def _semitones(rng: np.random.Generator) -> int:
    size = int(rng.integers(MIN_SHIFT_SEMITONES, MAX_SHIFT_SEMITONES + 1))
    return size if rng.random() < 0.5 else -size


def _shift(audio: np.ndarray, semitones: int) -> np.ndarray:
    """Play ``audio`` ``semitones`` higher (faster) or lower (slower)."""
    return speed_change(audio, float(2.0 ** (semitones / 12.0)))


def _passage(source: SourceTrack, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_samples`` of ``source`` from a random start, looping around the end when it is short."""
    audio = source.audio
    start = int(rng.integers(0, max(1, audio.size)))
    reps = 1 + (start + n_samples) // max(1, audio.size)
    return np.tile(audio, reps)[start : start + n_samples].astype(np.float32)


def _shifted_passage(
    source: SourceTrack, n_samples: int, rng: np.random.Generator,
) -> np.ndarray:
    """A shifted passage exactly ``n_samples`` long (the source span is chosen so the shift fits)."""
    semitones = _semitones(rng)
    ratio = 2.0 ** (semitones / 12.0)
    raw = _passage(source, int(np.ceil(n_samples * ratio)) + 16, rng)
    return _fit(_shift(raw, semitones), n_samples)


def _fit(audio: np.ndarray, n_samples: int) -> np.ndarray:
    out = np.zeros(n_samples, np.float32)
    out[: min(n_samples, audio.size)] = audio[:n_samples]
    return out


def _normalise(audio: np.ndarray) -> np.ndarray:
    """Scale to a broadcast-like level (peak 0.9) so every distractor is equally audible."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio * (0.9 / peak)).astype(np.float32) if peak > 0 else audio.astype(np.float32)


def _remix(
    pool: Sequence[SourceTrack], n_samples: int, sample_rate: int, rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[str, ...]]:
    fade = max(1, round(CROSSFADE_S * sample_rate))
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    pieces: list[np.ndarray] = []
    names: list[str] = []
    total = 0
    while total < n_samples:
        source = pool[int(rng.integers(len(pool)))]
        length = round(float(rng.uniform(*REMIX_PIECE_RANGE_S)) * sample_rate)
        piece = _shifted_passage(source, length, rng)
        piece[:fade] *= ramp
        piece[-fade:] *= ramp[::-1]
        pieces.append(piece)
        names.append(source.name)
        total += piece.size
    return np.concatenate(pieces)[:n_samples], tuple(dict.fromkeys(names))


def make_distractor(
    index: int, pool: Sequence[SourceTrack], sample_rate: int, seed: int,
) -> Distractor:
    """Distractor ``index`` of the set seeded by ``seed`` (the same audio every time)."""
    if not pool:
        raise ValueError("no source music to make distractors from")
    rng = np.random.default_rng([seed, index])
    kind = KINDS[int(rng.integers(len(KINDS)))]
    n_samples = round(float(rng.uniform(*DURATION_RANGE_S)) * sample_rate)
    first = pool[int(rng.integers(len(pool)))]
    names: tuple[str, ...]
    if kind == "shifted":
        audio, names = _shifted_passage(first, n_samples, rng), (first.name,)
    elif kind == "remix":
        audio, names = _remix(pool, n_samples, sample_rate, rng)
    else:
        second = pool[int(rng.integers(len(pool)))]
        level = 10.0 ** (-float(rng.uniform(0.0, 6.0)) / 20.0)
        audio = _shifted_passage(first, n_samples, rng) + level * _shifted_passage(second, n_samples, rng)
        names = tuple(dict.fromkeys((first.name, second.name)))
    return Distractor(index, kind, names, _normalise(audio))
