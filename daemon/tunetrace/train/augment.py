"""Degradations a broadcast-monitoring fingerprint must survive, in NumPy/SciPy (no torch).

Every function takes and returns float32 mono audio and is deterministic given its arguments
(randomness comes in through an explicit ``numpy.random.Generator``), so evaluation can reuse
them to build reproducible test conditions. ``PairSampler`` composes them into the
(clean, degraded) training pairs of the contrastive objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from scipy import signal as sps

from tunetrace.train.config import AugmentConfig
from tunetrace.train.data import AudioPool

TELEPHONE_BAND_HZ = (300.0, 3400.0)
SMALL_SPEAKER_BAND_HZ = (400.0, 3800.0)
QUIET_RMS = 1e-3
"""Anchors quieter than this (about -60 dBFS) are silence: no fingerprint can identify them."""


def _f32(values: Any) -> np.ndarray:
    """float32 view/copy with a concrete type for the checker (SciPy returns untyped arrays)."""
    out: np.ndarray = np.asarray(values, dtype=np.float32)
    return out


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)) + 1e-20))


def apply_gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
    return (audio * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def white_noise(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n_samples).astype(np.float32)


def pink_noise(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain by 1/sqrt(f), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n_samples)
    return (pink / max(rms(pink), 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``audio`` plus ``noise`` scaled so that the signal-to-noise power ratio is ``snr_db``."""
    scale = rms(audio) / max(rms(noise), 1e-12) / (10.0 ** (snr_db / 20.0))
    return _f32(audio + scale * noise[: audio.size])


def speed_change(audio: np.ndarray, ratio: float) -> np.ndarray:
    """Play ``audio`` ``ratio`` times faster by resampling (pitch moves too, like a fast turntable).

    The output has ``round(len / ratio)`` samples; linear interpolation is ample at these ratios.
    """
    n_out = round(audio.size / ratio)
    positions = np.arange(n_out, dtype=np.float64) * ratio
    return _f32(np.interp(positions, np.arange(audio.size), audio))


def synthetic_ir(
    rt60_s: float, sample_rate: int, rng: np.random.Generator, length_s: float = 0.5
) -> np.ndarray:
    """A room impulse response: direct path plus exponentially decaying noise (60 dB in ``rt60_s``).

    Early reflections are sparse spikes in the first 50 ms; the response is normalised to unit
    energy so reverb does not change loudness much.
    """
    n = max(2, round(length_s * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)
    early = np.zeros(n)
    taps = rng.integers(1, max(2, round(0.05 * sample_rate)), size=6)
    early[taps] = rng.uniform(-0.6, 0.6, size=taps.size)
    ir = 0.3 * tail + early
    ir[0] = 1.0
    return _f32(ir / np.sqrt(np.sum(ir**2)))


def reverb(audio: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """Convolve with ``ir`` and keep the original length (the tail beyond the end is cut)."""
    return _f32(sps.fftconvolve(audio, ir)[: audio.size])


@cache
def _butter(sample_rate: int, low_hz: float | None, high_hz: float | None, order: int) -> np.ndarray:
    nyquist = sample_rate / 2.0
    if low_hz and high_hz and high_hz < nyquist:
        return np.asarray(sps.butter(order, [low_hz, high_hz], "bandpass", fs=sample_rate, output="sos"))
    if low_hz:
        return np.asarray(sps.butter(order, low_hz, "highpass", fs=sample_rate, output="sos"))
    assert high_hz is not None
    return np.asarray(
        sps.butter(order, min(high_hz, nyquist * 0.99), "lowpass", fs=sample_rate, output="sos")
    )


def band_limit(
    audio: np.ndarray, sample_rate: int, low_hz: float | None, high_hz: float | None, order: int = 6
) -> np.ndarray:
    """Zero-phase Butterworth band limiting (``None`` leaves that edge open)."""
    sos = _butter(sample_rate, low_hz, high_hz, order)
    return _f32(sps.sosfiltfilt(sos, audio))


def telephone(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The 300–3400 Hz band of a narrow-band phone line."""
    return band_limit(audio, sample_rate, *TELEPHONE_BAND_HZ)


def small_speaker(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A laptop/phone loudspeaker: no bass below ~400 Hz, a presence bump around 2 kHz."""
    limited = band_limit(audio, sample_rate, *SMALL_SPEAKER_BAND_HZ, order=4)
    b, a = sps.iirpeak(2000.0, 2.0, fs=sample_rate)
    return _f32(0.7 * limited + 0.5 * sps.lfilter(b, a, limited))


@cache
def band_response(
    fft_size: int, sample_rate: int, low_hz: float | None, high_hz: float | None, order: int = 6
) -> np.ndarray:
    """|H(f)|² at the ``rfft`` bins of ``fft_size``: the zero-phase filter ``band_limit`` applies.

    Cached, because the training augmenter asks for the same few responses thousands of times.
    """
    sos = _butter(sample_rate, low_hz, high_hz, order)
    _, h = sps.sosfreqz(sos, worN=np.fft.rfftfreq(fft_size, 1.0 / sample_rate), fs=sample_rate)
    response = (np.abs(h) ** 2).astype(np.float32)
    response.setflags(write=False)
    return _f32(response)


def _grid(value_hz: float, step_hz: float = 50.0) -> float:
    """Random cut-offs snap to a grid so their responses can be cached."""
    return float(round(value_hz / step_hz) * step_hz)


def random_eq_response(fft_size: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One random equaliser magnitude response: telephone, small speaker, low-pass, or tilt+bumps."""
    kind = int(rng.integers(4))
    if kind == 0:
        return band_response(fft_size, sample_rate, *TELEPHONE_BAND_HZ)
    freqs_hz = np.fft.rfftfreq(fft_size, 1.0 / sample_rate)
    if kind == 1:
        low = _grid(rng.uniform(250.0, 600.0))
        bump = 1.0 + 0.8 * np.exp(-0.5 * ((freqs_hz - rng.uniform(1500, 3000)) / 400.0) ** 2)
        return _f32(band_response(fft_size, sample_rate, low, None, 4) * bump)
    if kind == 2:
        return band_response(fft_size, sample_rate, None, _grid(rng.uniform(1500.0, 3500.0)), 4)
    octaves = np.log2(np.maximum(freqs_hz, 50.0) / 1000.0)
    gain_db = rng.uniform(-6.0, 6.0) * octaves
    for _ in range(3):
        centre = rng.uniform(-3.0, 2.0)
        gain_db += rng.uniform(-10.0, 10.0) * np.exp(-0.5 * ((octaves - centre) / 0.4) ** 2)
    return _f32(10.0 ** (gain_db / 20.0))


@dataclass(frozen=True)
class PairBatch:
    clean: np.ndarray
    """(n, window) anchors, exactly as a catalog would cut them."""
    degraded: np.ndarray
    """(n, window) the same moments after the random degradation chain."""


class PairSampler:
    """Draws (clean, degraded) window pairs from a pool of tracks.

    The degraded side is read from a context around the anchor, sped up or slowed down, offset in
    time, optionally swapped for a lossy-codec copy, reverberated and equalised (one FFT for both),
    then mixed with noise or other music and scaled. A bank of impulse responses is drawn once.
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
    ) -> None:
        self.pool = pool
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
        self.margin = (
            int(np.ceil((self.window + self.context) * (1.0 + config.speed_max))) + self.max_offset + 2
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

    def _source(self, track: int, rng: np.random.Generator) -> np.ndarray:
        copies = self.pool.codec_copies[track]
        if copies and rng.random() < self.config.codec_probability:
            return copies[int(rng.integers(len(copies)))]
        return self.pool.tracks[track]

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
            source = self._source(track, rng)
            origin = start + offset - self.context * ratio
            positions = origin + np.arange(span, dtype=np.float64) * ratio
            base = int(np.floor(positions[0]))
            piece = source[base : int(np.ceil(positions[-1])) + 2]
            chunks[i] = np.interp(positions - base, np.arange(piece.size), piece)
        chunks = self._filter(chunks, rng)[:, self.context :]
        degraded = self._noise(chunks, rng)
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
                noise = white_noise(self.window, rng)
            elif kind == "pink":
                start = int(rng.integers(self.pink.size - self.window))
                noise = self.pink[start : start + self.window]
            else:
                track, start = self._anchor(rng)
                noise = self.pool.tracks[track][start : start + self.window]
            if rms(out[i]) > QUIET_RMS * 0.1:
                out[i] = add_noise(out[i], noise, float(rng.uniform(*cfg.snr_db)))
        return out
