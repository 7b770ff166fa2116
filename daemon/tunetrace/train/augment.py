"""Degradations a broadcast-monitoring fingerprint must survive, in NumPy/SciPy (no torch).

The degradations themselves live in ``evaluation.degrade`` (one home, shared with the evaluation);
``PairSampler`` composes them into the (clean, degraded) training pairs of the contrastive
objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunetrace.evaluation.degrade import (
    QUIET_RMS,
    mix_at_snr,
    pink_noise,
    random_eq_response,
    rms,
    synthetic_ir,
    white_noise_samples,
)
from tunetrace.train.config import AugmentConfig
from tunetrace.train.data import AudioPool


@dataclass(frozen=True)
class PairBatch:
    clean: np.ndarray
    """(n, window) anchors, exactly as a catalog would cut them."""
    degraded: np.ndarray
    """(n, window) the same moments after the random degradation chain."""


class PairSampler:
    """Draws (clean, degraded) window pairs from a pool of tracks.

    The degraded side is read from a context around the anchor, sped up or slowed down, offset in
    time, optionally swapped for a lossy-codec copy (MP3/AAC/Opus, the broadcast chain) or a
    pitch-shifted/time-stretched one, reverberated and equalised (one FFT for both), then mixed
    with noise or other music, talked over by recorded speech, and scaled. A bank of impulse
    responses is drawn once.
    """

    def __init__(
        self,
        pool: AudioPool,
        config: AugmentConfig,
        sample_rate: int,
        window_s: float,
        *,
        seed: int,
        n_irs: int = 256,
        speech: np.ndarray | None = None,
    ) -> None:
        self.pool = pool
        self.speech = speech
        """One long stream of recorded speech (``data.load_speech``), or ``None``: no talk-over."""
        if speech is not None and speech.size <= round(window_s * sample_rate):
            raise ValueError("the speech stream is shorter than one window")
        self.config = config
        self.sample_rate = sample_rate
        self.window = round(window_s * sample_rate)
        self.context = self.window // 2
        """Audio before the window that reverberates into it."""
        rng = np.random.default_rng([seed, 1])
        self.irs = np.stack(
            [
                synthetic_ir(float(rng.uniform(*config.rt60_s)), sample_rate, rng, self.context / sample_rate)
                for _ in range(n_irs)
            ]
        )
        self.pink = pink_noise(sample_rate * 60, rng)
        self.max_offset = round(config.offset_max_s * sample_rate)
        # Room for a time-stretched copy read at its own scale (tempo 0.95-1.05), when there is one.
        stretch_room = 1.06 if any(pool.stretched) else 1.0
        self.margin = (
            int(np.ceil((self.window + self.context) * (1.0 + config.speed_max) * stretch_room))
            + self.max_offset
            + 2
        )
        lengths = np.array([t.size for t in pool.tracks], dtype=np.float64)
        usable = np.maximum(lengths - 2 * self.margin - self.window, 0.0)
        if usable.sum() <= 0:
            raise ValueError("tracks are too short for the window and augmentation margins")
        self.weights = usable / usable.sum()

    def _anchor(self, rng: np.random.Generator) -> tuple[int, int]:
        """(track, start) of a non-silent anchor window."""
        for _ in range(20):
            track = int(rng.choice(len(self.pool.tracks), p=self.weights))
            audio = self.pool.tracks[track]
            start = int(rng.integers(self.margin, audio.size - self.margin - self.window + 1))
            if rms(audio[start : start + self.window]) > QUIET_RMS:
                break
        return track, start

    def _source(self, track: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """The audio the degraded side is read from, and its time scale against the clean track."""
        stretched = self.pool.stretched[track] if self.pool.stretched else []
        if stretched and rng.random() < self.config.stretch_probability:
            pick = stretched[int(rng.integers(len(stretched)))]
            return pick.audio, pick.time_scale
        copies = self.pool.codec_copies[track]
        if copies and rng.random() < self.config.codec_probability:
            return copies[int(rng.integers(len(copies)))], 1.0
        return self.pool.tracks[track], 1.0

    def sample(self, n_pairs: int, rng: np.random.Generator) -> PairBatch:
        cfg = self.config
        span = self.context + self.window
        clean = np.empty((n_pairs, self.window), np.float32)
        chunks = np.empty((n_pairs, span), np.float32)
        for i in range(n_pairs):
            track, start = self._anchor(rng)
            clean[i] = self.pool.tracks[track][start : start + self.window]
            ratio = 1.0 + float(rng.uniform(-cfg.speed_max, cfg.speed_max))
            offset = int(rng.integers(-self.max_offset, self.max_offset + 1))
            source, scale = self._source(track, rng)
            origin = (start + offset) * scale - self.context * ratio
            positions = origin + np.arange(span, dtype=np.float64) * ratio
            base = max(0, int(np.floor(positions[0])))
            piece = source[base : int(np.ceil(positions[-1])) + 2]
            if piece.size < 2:  # a copy a few samples shorter than its track: read silence
                piece = np.zeros(2, np.float32)
            chunks[i] = np.interp(positions - base, np.arange(piece.size), piece, right=0.0)
        chunks = self._filter(chunks, rng)[:, self.context :]
        degraded = self._talk_over(self._noise(chunks, rng), rng)
        gains = 10.0 ** (rng.uniform(*cfg.gain_db, size=(n_pairs, 1)) / 20.0)
        return PairBatch(clean, (degraded * gains).astype(np.float32))

    def _filter(self, chunks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Reverb and EQ as one frequency-domain product per row."""
        n, span = chunks.shape
        size = span + self.irs.shape[1]
        response = np.ones((n, size // 2 + 1), np.complex64)
        use_reverb: np.ndarray = np.asarray(rng.random(n) < self.config.reverb_probability)
        if use_reverb.any():
            picks = rng.integers(len(self.irs), size=int(use_reverb.sum()))
            response[use_reverb] = np.fft.rfft(self.irs[picks], size, axis=1)
        for i in np.flatnonzero(rng.random(n) < self.config.eq_probability):
            response[i] *= random_eq_response(size, self.sample_rate, rng)
        if np.all(response == 1):
            return chunks
        filtered = np.fft.irfft(np.fft.rfft(chunks, size, axis=1) * response, size, axis=1)[:, :span]
        return filtered.astype(np.float32)

    def _noise(self, windows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        out = windows.copy()
        for i in np.flatnonzero(rng.random(len(windows)) < cfg.noise_probability):
            kind = cfg.noise_kinds[int(rng.integers(len(cfg.noise_kinds)))]
            if kind == "white":
                noise = white_noise_samples(self.window, rng)
            elif kind == "pink":
                start = int(rng.integers(self.pink.size - self.window))
                noise = self.pink[start : start + self.window]
            else:
                track, start = self._anchor(rng)
                noise = self.pool.tracks[track][start : start + self.window]
            if rms(out[i]) > QUIET_RMS * 0.1:
                out[i] = mix_at_snr(out[i], noise, float(rng.uniform(*cfg.snr_db)))
        return out

    def _speech_window(self, rng: np.random.Generator) -> np.ndarray:
        """A voiced stretch of the speech stream (a few tries to avoid a pause)."""
        assert self.speech is not None
        for _ in range(10):
            start = int(rng.integers(self.speech.size - self.window))
            piece = self.speech[start : start + self.window]
            if rms(piece) > QUIET_RMS * 10:
                break
        return piece

    def _talk_over(self, windows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A presenter over the music at ``speech_snr_db`` (applied after any noise: both happen)."""
        cfg = self.config
        if self.speech is None or cfg.speech_probability <= 0:
            return windows
        out = windows.copy()
        for i in np.flatnonzero(rng.random(len(windows)) < cfg.speech_probability):
            if rms(out[i]) > QUIET_RMS * 0.1:
                out[i] = mix_at_snr(out[i], self._speech_window(rng), float(rng.uniform(*cfg.speech_snr_db)))
        return out
