"""The shipped fingerprint model and the NumPy augmentations (no torch needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from tests.test_train_data import OFF as AUGMENT_OFF
from tunetrace.audio.resample import speed_change
from tunetrace.config import EncoderConfig
from tunetrace.encoders import create_encoder
from tunetrace.encoders.fingerprint import SHIPPED_MODEL, FingerprintEncoder
from tunetrace.errors import ModelError
from tunetrace.evaluation import degrade
from tunetrace.train import augment
from tunetrace.train.config import AugmentConfig
from tunetrace.train.data import AudioPool, CodecSpec, align, codec_roundtrip, estimate_lag

SR = 8000


def _music_like(seconds: float, seed: int) -> np.ndarray:
    """Broadband test audio: a few decaying harmonic notes over pink noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    out = 0.05 * degrade.pink_noise(t.size, rng)
    for start in np.arange(0.0, seconds, 0.25):
        f0 = rng.uniform(100, 800)
        env = np.where(t >= start, np.exp(-(t - start) * 6.0), 0.0)
        for h in range(1, 5):
            out += env * np.sin(2 * np.pi * f0 * h * t) / h * 0.2
    return out.astype(np.float32)


def _band_energy(audio: np.ndarray, low_hz: float, high_hz: float) -> float:
    freqs, psd = sps.welch(audio, fs=SR, nperseg=1024)
    band = (freqs >= low_hz) & (freqs < high_hz)
    return float(psd[band].sum())


# ---- augmentations ---------------------------------------------------------------------------


@pytest.mark.parametrize("snr_db", [0.0, 5.0, 10.0, 20.0])
def test_add_noise_reaches_requested_snr(snr_db: float) -> None:
    rng = np.random.default_rng(1)
    clean = _music_like(3.0, 1)
    noisy = degrade.mix_at_snr(clean, degrade.white_noise_samples(clean.size, rng), snr_db)
    measured = 20 * np.log10(degrade.rms(clean) / degrade.rms(noisy - clean))
    assert measured == pytest.approx(snr_db, abs=0.05)


def test_pink_noise_falls_3db_per_octave() -> None:
    noise = degrade.pink_noise(SR * 20, np.random.default_rng(2))
    low = _band_energy(noise, 250, 500) / 250
    high = _band_energy(noise, 1000, 2000) / 1000
    assert 10 * np.log10(low / high) == pytest.approx(6.0, abs=1.0)  # two octaves


@pytest.mark.parametrize("ratio", [0.95, 0.97, 1.03, 1.05])
def test_speed_change_scales_length_and_pitch(ratio: float) -> None:
    t = np.arange(SR * 2) / SR
    tone = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    faster = speed_change(tone, ratio)
    assert abs(faster.size - tone.size / ratio) <= 1  # polyphase: ceil of the exact length
    freqs, psd = sps.welch(faster, fs=SR, nperseg=4096)
    assert freqs[np.argmax(psd)] == pytest.approx(1000.0 * ratio, abs=4.0)


def test_telephone_removes_out_of_band_energy() -> None:
    audio = degrade.white_noise_samples(SR * 4, np.random.default_rng(3))
    phone = degrade.telephone_band(audio, SR)
    assert _band_energy(phone, 0, 200) < 0.01 * _band_energy(audio, 0, 200)
    assert _band_energy(phone, 3700, 4000) < 0.01 * _band_energy(audio, 3700, 4000)
    assert _band_energy(phone, 800, 2500) > 0.8 * _band_energy(audio, 800, 2500)


def test_small_speaker_removes_bass() -> None:
    audio = degrade.white_noise_samples(SR * 4, np.random.default_rng(4))
    speaker = degrade.small_speaker(audio, SR)
    assert _band_energy(speaker, 0, 150) < 0.01 * _band_energy(audio, 0, 150)


@pytest.mark.parametrize("gain_db", [-12.0, -6.0, 0.0, 6.0])
def test_gain_scales_rms(gain_db: float) -> None:
    audio = _music_like(1.0, 5)
    assert degrade.rms(degrade.apply_gain(audio, gain_db)) / degrade.rms(audio) == pytest.approx(
        10 ** (gain_db / 20), rel=1e-4
    )


def test_reverb_keeps_length_and_smears_in_time() -> None:
    rng = np.random.default_rng(6)
    ir = degrade.synthetic_ir(0.6, SR, rng)
    assert np.sum(ir**2) == pytest.approx(1.0, rel=1e-4)
    click = np.zeros(SR, np.float32)
    click[100] = 1.0
    wet = degrade.reverb(click, ir)
    assert wet.size == click.size
    assert np.sum(wet[100 + SR // 10 :] ** 2) > 0.01  # energy persists after 100 ms
    assert np.sum(click[100 + SR // 10 :] ** 2) == 0.0


def test_band_response_matches_filter() -> None:
    response = degrade.band_response(4096, SR, *degrade.TELEPHONE_BAND_HZ)
    freqs = np.fft.rfftfreq(4096, 1 / SR)
    assert response[freqs < 150].max() < 0.01
    assert response[(freqs > 800) & (freqs < 2500)].min() > 0.9


def test_codec_alignment_recovers_delay() -> None:
    audio = _music_like(4.0, 7)
    delayed = np.concatenate([np.zeros(321, np.float32), audio])
    lag = estimate_lag(audio, delayed)
    assert lag == 321
    np.testing.assert_allclose(align(delayed, lag, audio.size), audio, atol=1e-6)


@pytest.mark.parametrize(
    "codec", [CodecSpec("libmp3lame", 64), CodecSpec("aac", 64), CodecSpec("libmp3lame", 128)], ids=str
)
def test_codec_copies_are_lossy_but_aligned_and_full_length(codec: CodecSpec) -> None:
    """The precomputed codec augmentation: a real ffmpeg round trip, sample-aligned to the
    original (the training pair shares its time axis), audibly changed but the same music."""
    audio = _music_like(4.0, 11)
    copy = codec_roundtrip(audio, SR, codec)
    assert copy.shape == audio.shape
    residual = float(np.sqrt(np.mean((copy - audio) ** 2)) / np.sqrt(np.mean(audio**2)))
    assert 0.01 < residual < 0.3, f"{codec.tag}: relative error {residual:.4f}"  # 0.056-0.075 measured
    assert estimate_lag(audio, copy) == 0


def test_pair_sampler_shapes_and_determinism() -> None:
    pool = AudioPool(["a/x", "a/y"], [_music_like(12.0, 8), _music_like(12.0, 9)], [[], []])
    sampler = augment.PairSampler(pool, AugmentConfig(), SR, 1.0, seed=1, n_irs=8)
    first = sampler.sample(6, np.random.default_rng(5))
    again = sampler.sample(6, np.random.default_rng(5))
    assert first.clean.shape == first.degraded.shape == (6, SR)
    assert first.degraded.dtype == np.float32
    np.testing.assert_array_equal(first.degraded, again.degraded)
    assert not np.allclose(first.clean, first.degraded)


def test_pair_sampler_without_degradation_is_the_anchor() -> None:
    """With every augmentation off, the degraded side must be the clean anchor itself."""
    pool = AudioPool(["a/x"], [_music_like(12.0, 10)], [[]])
    sampler = augment.PairSampler(pool, AUGMENT_OFF, SR, 1.0, seed=1, n_irs=2)
    batch = sampler.sample(4, np.random.default_rng(0))
    np.testing.assert_allclose(batch.degraded, batch.clean, atol=1e-5)


# ---- the shipped model -----------------------------------------------------------------------

needs_model = pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="fingerprint.onnx not shipped yet")


@needs_model
def test_shipped_model_embeds_unit_vectors_deterministically() -> None:
    encoder = create_encoder(EncoderConfig(name="fingerprint"))
    windows = np.stack([_music_like(1.0, s) for s in range(5)])
    first = encoder.embed(windows)
    assert first.shape == (5, 128)
    assert first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, encoder.embed(windows))
    np.testing.assert_allclose(encoder.embed(windows[2:3])[0], first[2], atol=1e-5)
    assert encoder.embed(np.zeros((0, SR), np.float32)).shape == (0, 128)


@needs_model
def test_shipped_model_identity_and_sidecar() -> None:
    encoder = FingerprintEncoder()
    digest = hashlib.sha256(SHIPPED_MODEL.read_bytes()).hexdigest()
    info = encoder.info
    assert info.encoder_id == f"fingerprint-{digest[:12]}"
    assert (info.sample_rate, info.window_s, info.hop_s, info.dimension, info.metric) == (
        8000,
        1.0,
        0.5,
        128,
        "IP",
    )
    assert SHIPPED_MODEL.stat().st_size <= 10 * 1024 * 1024


@needs_model
def test_shipped_model_is_robust_to_mild_noise() -> None:
    """Sanity: a window and its 20 dB-noisy copy are closer than two different windows."""
    encoder = FingerprintEncoder()
    audio = _music_like(4.0, 11)
    a, b = audio[:SR], audio[2 * SR : 3 * SR]
    noisy = degrade.mix_at_snr(a, degrade.white_noise_samples(SR, np.random.default_rng(0)), 20.0)
    za, zb, zn = encoder.embed(np.stack([a, b, noisy]))
    assert float(za @ zn) > float(za @ zb)


def test_missing_model_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"encoder\.model_path"):
        create_encoder(EncoderConfig(name="fingerprint", model_path=tmp_path / "nope.onnx"))


def test_model_without_sidecar_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really onnx")
    with pytest.raises(ModelError, match="sidecar"):
        FingerprintEncoder(model)
