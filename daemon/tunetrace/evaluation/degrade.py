"""The degradations a broadcast recording meets on its way to the monitor, as small pure functions.

The one home of every degradation: the evaluation builds its conditions from them and the
training recipe (``train.augment``) its augmentations.

Each function takes mono float32 audio (and its sample rate where it matters) and returns new
float32 audio; randomness only ever enters through an explicit ``numpy.random.Generator``, so a
seed reproduces an evaluation exactly.  The MP3 round trip is the one exception to "pure": it runs
the real encoder (ffmpeg's libmp3lame) through pipes, because a codec's artefacts cannot be
imitated honestly with a filter.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from tunetrace.audio.decode import _tool
from tunetrace.audio.resample import resample
from tunetrace.errors import DecodeError

TELEPHONE_LOW_HZ = 300.0
TELEPHONE_HIGH_HZ = 3400.0
TELEPHONE_RATE_HZ = 8000
TELEPHONE_FILTER_ORDER = 6
"""Butterworth order of each band edge; applied forwards and backwards (zero phase)."""
MP3_CODEC_RATE_HZ = 22050
"""Rate the MP3 is encoded at: 64 kbit/s streams are commonly 22.05 kHz, and libmp3lame would
otherwise pick a rate itself from whatever the evaluation decodes at."""
MP3_FRAME_SAMPLES = 1152
MP3_MAX_DELAY_FRAMES = 2
"""Encoder plus decoder delay is under one frame for LAME; two leaves room for other builds."""
_FFMPEG_TIMEOUT_S = 60.0



class _LazySignal:
    """``scipy.signal`` takes seconds to import; only evaluation runs need it, not ``--help``."""

    def __getattr__(self, name: str) -> Any:
        import scipy.signal

        return getattr(scipy.signal, name)


signal = _LazySignal()

def _f32(values: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.asarray(values, dtype=np.float32)
    return out


def rms(audio: np.ndarray) -> float:
    """Root-mean-square level; a tiny floor keeps silence from dividing by zero."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)) + 1e-20))


def snr_db(clean: np.ndarray, degraded: np.ndarray) -> float:
    """Signal-to-noise ratio of ``degraded`` against ``clean`` (the noise is their difference)."""
    return 20.0 * float(np.log10(rms(clean) / rms(degraded - clean)))


def mix_at_snr(audio: np.ndarray, interference: np.ndarray, snr: float) -> np.ndarray:
    """``audio`` plus ``interference`` scaled so that their power ratio is ``snr`` dB.

    ``interference`` must be at least as long as ``audio``; only its first ``audio.size`` samples
    are used.  The mix is not renormalised: a monitor sees the sum, louder than either part.
    """
    if interference.size < audio.size:
        raise ValueError(f"interference has {interference.size} samples, the audio {audio.size}")
    part = interference[: audio.size].astype(np.float64)
    scale = rms(audio) / max(rms(part), 1e-12) / 10.0 ** (snr / 20.0)
    return _f32(audio + scale * part)


def white_noise(audio: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian white noise at ``snr`` dB below the audio's own level."""
    return mix_at_snr(audio, rng.standard_normal(audio.size), snr)


def synthetic_impulse_response(
    sample_rate: int, rng: np.random.Generator, rt60_s: float | None = None,
    rt60_range_s: tuple[float, float] = (0.4, 0.6),
) -> np.ndarray:
    """A room: a direct path then exponentially decaying noise, 60 dB down after ``rt60_s``.

    ``rt60_s`` defaults to a draw from ``rt60_range_s``.  The response is cut at ``rt60_s`` (what
    is left is inaudible) and scaled to unit energy, so reverb changes colour, not loudness.
    """
    rt60 = float(rng.uniform(*rt60_range_s)) if rt60_s is None else rt60_s
    n_samples = max(2, round(rt60 * sample_rate))
    t_s = np.arange(n_samples) / sample_rate
    decay = np.exp(-np.log(1000.0) * t_s / rt60)  # amplitude 10**(-60/20) at rt60
    response = rng.standard_normal(n_samples) * decay * 0.5
    response[0] = 1.0
    return _f32(response / np.sqrt(np.sum(response**2)))


def reverb(audio: np.ndarray, impulse_response: np.ndarray) -> np.ndarray:
    """Convolve with ``impulse_response``; the tail past the end is cut, so the length is kept."""
    return _f32(signal.fftconvolve(audio, impulse_response)[: audio.size])


def band_pass(audio: np.ndarray, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Zero-phase Butterworth band-pass (forwards and backwards: no group delay, so offsets stay)."""
    return band_limit(audio, sample_rate, low_hz, high_hz, TELEPHONE_FILTER_ORDER)


def telephone(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A narrow-band phone line: 8 kHz sampling and the 300-3400 Hz voice band."""
    narrow = resample(audio, sample_rate, TELEPHONE_RATE_HZ)
    narrow = band_pass(narrow, TELEPHONE_RATE_HZ, TELEPHONE_LOW_HZ, TELEPHONE_HIGH_HZ)
    return resample(narrow, TELEPHONE_RATE_HZ, sample_rate)


TELEPHONE_BAND_HZ = (300.0, 3400.0)
SMALL_SPEAKER_BAND_HZ = (400.0, 3800.0)
QUIET_RMS = 1e-3
"""Audio quieter than this (about -60 dBFS) is silence: no fingerprint can identify it."""


def apply_gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
    return (audio * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def white_noise_samples(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise (for mixing at a chosen SNR)."""
    return rng.standard_normal(n_samples).astype(np.float32)


def pink_noise(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain by 1/sqrt(f), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n_samples)
    return (pink / max(rms(pink), 1e-12)).astype(np.float32)


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


@cache
def _butter(sample_rate: int, low_hz: float | None, high_hz: float | None, order: int) -> np.ndarray:
    nyquist = sample_rate / 2.0
    if low_hz and high_hz and high_hz < nyquist:
        return np.asarray(signal.butter(order, [low_hz, high_hz], "bandpass", fs=sample_rate, output="sos"))
    if low_hz:
        return np.asarray(signal.butter(order, low_hz, "highpass", fs=sample_rate, output="sos"))
    assert high_hz is not None
    return np.asarray(
        signal.butter(order, min(high_hz, nyquist * 0.99), "lowpass", fs=sample_rate, output="sos")
    )


def band_limit(
    audio: np.ndarray, sample_rate: int, low_hz: float | None, high_hz: float | None, order: int = 6
) -> np.ndarray:
    """Zero-phase Butterworth band limiting (``None`` leaves that edge open)."""
    sos = _butter(sample_rate, low_hz, high_hz, order)
    return _f32(signal.sosfiltfilt(sos, audio))


def telephone_band(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The 300–3400 Hz band of a narrow-band phone line, at the audio's own rate."""
    return band_limit(audio, sample_rate, *TELEPHONE_BAND_HZ)


def small_speaker(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A laptop/phone loudspeaker: no bass below ~400 Hz, a presence bump around 2 kHz."""
    limited = band_limit(audio, sample_rate, *SMALL_SPEAKER_BAND_HZ, order=4)
    b, a = signal.iirpeak(2000.0, 2.0, fs=sample_rate)
    return _f32(0.7 * limited + 0.5 * signal.lfilter(b, a, limited))


@cache
def band_response(
    fft_size: int, sample_rate: int, low_hz: float | None, high_hz: float | None, order: int = 6
) -> np.ndarray:
    """|H(f)|² at the ``rfft`` bins of ``fft_size``: the zero-phase filter ``band_limit`` applies.

    Cached, because the training augmenter asks for the same few responses thousands of times.
    """
    sos = _butter(sample_rate, low_hz, high_hz, order)
    _, h = signal.sosfreqz(sos, worN=np.fft.rfftfreq(fft_size, 1.0 / sample_rate), fs=sample_rate)
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


def _ffmpeg(args: list[str], data: bytes, what: str) -> bytes:
    try:
        result = subprocess.run(
            [_tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", *args],
            input=data, capture_output=True, check=False, timeout=_FFMPEG_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise DecodeError(f"ffmpeg did not finish the {what} within {_FFMPEG_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DecodeError(f"ffmpeg {what} failed: {reason[-1] if reason else result.returncode}")
    return result.stdout


@dataclass(frozen=True)
class Codec:
    """A lossy path a broadcast takes: optional processing, then an encoder at a bit rate."""

    encoder: str
    """ffmpeg encoder (``libmp3lame``, ``aac``)."""
    bitrate_kbps: int
    container: str
    """Muxer that streams through a pipe (``mp3``, ``adts``)."""
    rate_hz: int
    """Sampling rate the audio is encoded at (low-bitrate streams run at 22.05/24 kHz)."""
    filters: str = ""
    """ffmpeg audio filters applied at ``rate_hz`` before encoding (broadcast processing)."""


BROADCAST_PROCESSING = "mcompand,volume=12dB,alimiter=limit=0.9:level=disabled,lowpass=f=15000"
"""A station's processing chain: ffmpeg's default 5-band compressor (crossovers 100 Hz-22 kHz, for
44.1 kHz audio), 12 dB of make-up gain driven into a look-ahead limiter at -0.9 dBFS (loud, dense,
as stations sound), and the 15 kHz low-pass of FM and most streams."""
MP3_64K = Codec("libmp3lame", 64, "mp3", MP3_CODEC_RATE_HZ)
AAC_32K = Codec("aac", 32, "adts", 24000)
AAC_24K = Codec("aac", 24, "adts", 22050)
OPUS_24K = Codec("libopus", 24, "ogg", 48000)
"""Opus only runs at 8/12/16/24/48 kHz; 48 kHz is what web radio streams use."""
OPUS_16K = Codec("libopus", 16, "ogg", 48000)
BROADCAST_AAC_48K = Codec("aac", 48, "adts", 44100, BROADCAST_PROCESSING)


def codec_round_trip(audio: np.ndarray, sample_rate: int, codec: Codec) -> np.ndarray:
    """Encode with ``codec`` and decode again, through pipes (no files, no shell).

    Through a pipe the muxer cannot go back to write a gapless header, so the decoded audio starts
    with the codec's delay (about 1105 samples at the codec rate for LAME, 1024 for AAC, plus a few
    milliseconds of limiter look-ahead); it is found by cross-correlation and removed, so the
    output lines up with the input.  Its length can still differ by up to a frame, which callers
    trim or pad.
    """
    pcm = np.ascontiguousarray(audio, dtype="<f4").tobytes()
    # Resampled first inside the graph: the filters are tuned for the codec's rate, not the input's.
    processing = ["-af", f"aresample={codec.rate_hz},{codec.filters}"] if codec.filters else []
    encoded = _ffmpeg(
        ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0", "-ar", str(codec.rate_hz),
         *processing, "-c:a", codec.encoder, "-b:a", f"{codec.bitrate_kbps}k",
         "-f", codec.container, "pipe:1"],
        pcm, f"{codec.encoder} encode",
    )
    decoded = _ffmpeg(
        ["-f", "aac" if codec.container == "adts" else codec.container, "-i", "pipe:0", "-ac", "1",
         "-ar", str(sample_rate), "-f", "f32le", "pipe:1"],
        encoded, f"{codec.encoder} decode",
    )
    usable = len(decoded) - len(decoded) % 4
    out = np.frombuffer(decoded[:usable], dtype="<f4").astype(np.float32)
    max_lag = -(-MP3_MAX_DELAY_FRAMES * MP3_FRAME_SAMPLES * sample_rate // codec.rate_hz)
    return out[codec_delay(audio, out, max_lag):]


def mp3_round_trip(
    audio: np.ndarray, sample_rate: int, bitrate_kbps: int = 64, codec_rate_hz: int = MP3_CODEC_RATE_HZ
) -> np.ndarray:
    """Encode to MP3 with libmp3lame and decode again, sample-aligned (``codec_round_trip``)."""
    return codec_round_trip(audio, sample_rate, Codec("libmp3lame", bitrate_kbps, "mp3", codec_rate_hz))


def ffmpeg_filter(audio: np.ndarray, sample_rate: int, filters: str) -> np.ndarray:
    """Run ``audio`` through an ffmpeg audio filter graph (through pipes; the graph is ours, never
    user input)."""
    pcm = np.ascontiguousarray(audio, dtype="<f4").tobytes()
    out = _ffmpeg(
        ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0", "-af", filters,
         "-ar", str(sample_rate), "-f", "f32le", "pipe:1"],
        pcm, f"filter {filters.split('=', maxsplit=1)[0]}",
    )
    return np.frombuffer(out[: len(out) - len(out) % 4], dtype="<f4").astype(np.float32)


def pitch_shift(audio: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Higher or lower by ``semitones`` with the tempo unchanged (Rubber Band, as in playout
    software); the output lines up with the input within a few milliseconds."""
    return ffmpeg_filter(audio, sample_rate, f"rubberband=pitch={2.0 ** (semitones / 12.0):.6f}")


def time_stretch(audio: np.ndarray, sample_rate: int, tempo: float) -> np.ndarray:
    """``tempo`` times as fast with the pitch unchanged (``len(audio) / tempo`` samples out)."""
    return ffmpeg_filter(audio, sample_rate, f"rubberband=tempo={tempo:.6f}")


def codec_delay(reference: np.ndarray, delayed: np.ndarray, max_lag: int) -> int:
    """Samples by which ``delayed`` lags ``reference`` (0..``max_lag``), by cross-correlation."""
    n = min(reference.size, delayed.size - max_lag)
    if n <= 0:
        return 0
    scores = signal.correlate(delayed[: n + max_lag], reference[:n], mode="valid", method="fft")
    return int(np.argmax(scores))


def fit_length(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Trim, or pad with zeros, to exactly ``n_samples``."""
    if audio.size >= n_samples:
        return _f32(audio[:n_samples])
    return _f32(np.concatenate([audio, np.zeros(n_samples - audio.size, np.float32)]))


def codec_round_trip_many(
    segments: Sequence[np.ndarray], sample_rate: int, codec: Codec, gap_s: float = 1.0
) -> list[np.ndarray]:
    """``codec_round_trip`` of each segment, as one encode and one decode (two processes, not 2n).

    Segments are laid end to end with ``gap_s`` of silence between them, far more than a codec's
    frame and bit-reservoir reach and a compressor's release, so none leaks into its neighbour;
    each comes back at its own offset with its input length.
    """
    gap = np.zeros(round(gap_s * sample_rate), np.float32)
    starts: list[int] = []
    parts: list[np.ndarray] = []
    position = 0
    for segment in segments:
        starts.append(position)
        parts.extend([segment.astype(np.float32), gap])
        position += segment.size + gap.size
    decoded = codec_round_trip(np.concatenate(parts) if parts else gap, sample_rate, codec)
    return [fit_length(decoded[s : s + seg.size], seg.size) for s, seg in zip(starts, segments, strict=True)]


def mp3_round_trip_many(
    segments: Sequence[np.ndarray], sample_rate: int, bitrate_kbps: int = 64, gap_s: float = 0.5
) -> list[np.ndarray]:
    """``codec_round_trip_many`` with MP3 at ``bitrate_kbps``."""
    codec = Codec("libmp3lame", bitrate_kbps, "mp3", MP3_CODEC_RATE_HZ)
    return codec_round_trip_many(segments, sample_rate, codec, gap_s)
