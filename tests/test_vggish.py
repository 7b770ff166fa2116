"""VGGish encoder: front end against an independent reference, weight loading, post-processing.

The published weights cannot be downloaded in CI, so a checkpoint with torchvggish's exact keys and
shapes is generated from a fixed seed.  That checks the plumbing (layout, flatten order, PCA,
quantisation, errors); numerical equality with the published model needs the real files.
"""

from __future__ import annotations

import io
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tunetrace.config import EncoderConfig
from tunetrace.encoders import vggish
from tunetrace.encoders.vggish import (
    DIMENSION,
    WINDOW_SAMPLES,
    PcaParams,
    VGGishEncoder,
    dequantise,
    expected_state_shapes,
    log_mel_examples,
    postprocess,
)
from tunetrace.encoders.weights import VGGISH_PCA_PARAMS, VGGISH_WEIGHTS
from tunetrace.errors import ModelError
from tunetrace.hashing import file_sha256

SR = 16000


# ---------------------------------------------------------------- helpers, independent of vggish.py


def _htk_mel(hz: float | np.ndarray) -> Any:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def reference_log_mel(audio: np.ndarray) -> np.ndarray:
    """Straightforward loops: framed DFT magnitude -> HTK triangles over FFT bins -> log(+0.01)."""
    win, hop, n_fft, n_mels = 400, 160, 512, 64
    n = np.arange(win)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win)  # periodic Hann
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(k, np.arange(n_fft)) / n_fft)
    edges = np.linspace(_htk_mel(125.0), _htk_mel(7500.0), n_mels + 2)
    weights = np.zeros((k.size, n_mels))
    for b in range(1, k.size):  # the DC bin carries no weight
        m = _htk_mel(b * SR / n_fft)
        for band in range(n_mels):
            lo, centre, hi = edges[band : band + 3]
            if lo < m <= centre:
                weights[b, band] = (m - lo) / (centre - lo)
            elif centre < m < hi:
                weights[b, band] = (hi - m) / (hi - centre)
    frames = []
    for i in range(1 + (audio.size - win) // hop):
        padded = np.zeros(n_fft)
        padded[:win] = audio[i * hop : i * hop + win] * window
        frames.append(np.log(np.abs(dft @ padded) @ weights + 0.01))
    return np.array(frames)


def _sine(freq: float, n: int = WINDOW_SAMPLES, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def _windows(count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW_SAMPLES) / SR
    rows = [
        0.3 * np.sin(2 * np.pi * rng.uniform(200, 4000) * t) + 0.05 * rng.standard_normal(t.size)
        for _ in range(count)
    ]
    return np.array(rows, dtype=np.float32)


def _random_pca(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((DIMENSION, DIMENSION)))
    return (q * 3.0), rng.uniform(0.0, 0.2, DIMENSION)


def _save_numpy1_pickle(obj: object, path: Path, torch: ModuleType) -> None:
    """Save like the 2019 release: legacy torch format with NumPy 1.x module names."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def torch() -> ModuleType:
    module: ModuleType = pytest.importorskip("torch")
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, torch: ModuleType) -> Iterator[Path]:
    """A seeded checkpoint with torchvggish's keys and shapes, and PCA params as NumPy arrays.

    Removed after the module: the checkpoint is ~220 MB, and pytest keeps its last three
    temporary directories."""
    directory = tmp_path_factory.mktemp("vggish")
    generator = torch.Generator().manual_seed(1234)
    state = {}
    for key, shape in expected_state_shapes().items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = (2.0 / fan_in) ** 0.5 if len(shape) > 1 else 0.01
        state[key] = torch.randn(shape, generator=generator).mul_(scale)
    torch.save(state, directory / VGGISH_WEIGHTS)
    vectors, means = _random_pca(7)
    _save_numpy1_pickle({"pca_eigen_vectors": vectors, "pca_means": means},
                        directory / VGGISH_PCA_PARAMS, torch)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> VGGishEncoder:
    return VGGishEncoder.from_files(model_dir, postprocess=True, threads=1, batch_size=2)


@pytest.fixture(scope="module")
def plain_encoder(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory, torch: ModuleType
) -> VGGishEncoder:
    """The same weights re-saved in torch's legacy (pre-1.6, non-zip) format, as the 2020 release
    may be, loaded via config from a directory without the PCA file."""
    directory = tmp_path_factory.mktemp("vggish-plain")
    state = torch.load(model_dir / VGGISH_WEIGHTS, weights_only=True)
    torch.save(state, directory / VGGISH_WEIGHTS, _use_new_zipfile_serialization=False)
    return VGGishEncoder.from_config(
        EncoderConfig(name="vggish", model_path=directory, vggish_postprocess=False, batch_size=64)
    )


# ---------------------------------------------------------------- front end (NumPy only)


def test_window_is_exactly_96_frames() -> None:
    assert WINDOW_SAMPLES == 15600
    assert vggish.WINDOW_S == 15600 / 16000
    assert log_mel_examples(np.zeros((3, WINDOW_SAMPLES), np.float32)).shape == (3, 96, 64)
    with pytest.raises(ValueError, match="15600"):
        log_mel_examples(np.zeros((1, 15360), np.float32))


def test_front_end_matches_reference_loop_for_1khz_sine() -> None:
    audio = _sine(1000.0)
    ours = log_mel_examples(audio[None])[0]
    expected = reference_log_mel(audio.astype(np.float64))
    assert ours.shape == expected.shape == (96, 64)
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=0)

    edges = np.linspace(_htk_mel(125.0), _htk_mel(7500.0), 66)
    peak = int(np.argmax(ours.mean(axis=0)))
    assert edges[peak] < _htk_mel(1000.0) < edges[peak + 2]  # 1 kHz lies inside the peak band
    assert peak == int(np.argmin(np.abs(edges[1:-1] - _htk_mel(1000.0))))  # nearest centre


def test_front_end_silence_is_log_offset() -> None:
    silent = log_mel_examples(np.zeros((1, WINDOW_SAMPLES), np.float32))
    np.testing.assert_allclose(silent, np.log(0.01), rtol=1e-6)


# ---------------------------------------------------------------- post-processing (NumPy only)


def test_postprocess_is_pca_clip_and_quantise() -> None:
    vectors, means = _random_pca(3)
    raw = np.random.default_rng(0).uniform(0, 1, (20, DIMENSION)).astype(np.float32)
    quantised = postprocess(raw, PcaParams(vectors, means))

    whitened = np.array([vectors @ (row - means) for row in raw.astype(np.float64)])
    expected = np.round((np.clip(whitened, -2, 2) + 2) * 255 / 4)
    assert quantised.dtype == np.uint8
    np.testing.assert_array_equal(quantised, expected)
    assert quantised.min() == 0 and quantised.max() == 255  # scale 3 makes some values clip
    without_pca = np.round((np.clip(raw, -2, 2) + 2) * 255 / 4)
    assert not np.array_equal(quantised, without_pca)


def test_dequantise_is_centred() -> None:
    codes = np.array([[0, 255, 127, 128]], np.uint8)
    np.testing.assert_allclose(dequantise(codes), [[-1.0, 1.0, -0.5 / 127.5, 0.5 / 127.5]])


def test_state_layout_matches_torchvggish() -> None:
    shapes = expected_state_shapes()
    convs = [f"features.{i}" for i in (0, 3, 6, 8, 11, 13)]
    fcs = [f"embeddings.{i}" for i in (0, 2, 4)]
    assert set(shapes) == {f"{m}.{p}" for m in convs + fcs for p in ("weight", "bias")}
    assert shapes["features.0.weight"] == (64, 1, 3, 3)
    assert shapes["features.13.weight"] == (512, 512, 3, 3)
    assert shapes["embeddings.0.weight"] == (4096, 12288)
    assert shapes["embeddings.4.bias"] == (128,)


# ---------------------------------------------------------------- network (needs torch)


def test_loads_and_embeds_unit_vectors(encoder: VGGishEncoder, model_dir: Path) -> None:
    info = encoder.info
    assert info.encoder_id == f"vggish-{file_sha256(model_dir / VGGISH_WEIGHTS)[:8]}-pca"
    assert (info.sample_rate, info.dimension, info.metric) == (SR, 128, "IP")
    assert info.window_spec.window_samples == WINDOW_SAMPLES
    assert info.window_spec.hop_samples == 48 * 160

    vectors = encoder.embed(_windows(3))
    assert vectors.shape == (3, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert encoder.embed(np.zeros((0, WINDOW_SAMPLES), np.float32)).shape == (0, 128)


def test_embeddings_are_deterministic(
    encoder: VGGishEncoder, plain_encoder: VGGishEncoder
) -> None:
    windows = _windows(3, seed=5)
    first = encoder.embed_raw(windows)
    np.testing.assert_array_equal(first, encoder.embed_raw(windows))
    # another load of the same file, batched differently: same numbers up to float rounding
    np.testing.assert_allclose(plain_encoder.embed_raw(windows), first, rtol=1e-4, atol=1e-5)
    assert np.abs(first).max() > 0  # the seeded network is not dead


def test_flatten_is_channels_last(encoder: VGGishEncoder, torch: ModuleType) -> None:
    """fc input index = (row * 4 + column) * 512 + channel, as TF's NHWC flatten produced."""
    windows = _windows(2, seed=9)
    network = encoder._network
    with torch.inference_mode():
        patches = torch.from_numpy(log_mel_examples(windows))[:, None]
        maps = network["features"](patches).numpy()
        assert maps.shape == (2, 512, 6, 4)
        flat = np.zeros((2, 12288), np.float32)
        for row in range(6):
            for column in range(4):
                for channel in range(512):
                    flat[:, (row * 4 + column) * 512 + channel] = maps[:, channel, row, column]
        expected = network["embeddings"](torch.from_numpy(flat)).numpy()
    np.testing.assert_allclose(encoder.embed_raw(windows), expected, rtol=1e-4, atol=1e-5)


def test_quantised_output_applies_the_pca_file(encoder: VGGishEncoder) -> None:
    windows = _windows(3, seed=11)
    raw = encoder.embed_raw(windows).astype(np.float64)
    vectors, means = _random_pca(7)
    expected = np.round((np.clip((raw - means) @ vectors.T, -2, 2) + 2) * 255 / 4)
    quantised = encoder.embed_quantised(windows)
    assert quantised.dtype == np.uint8
    np.testing.assert_array_equal(quantised, expected)
    unit = dequantise(quantised)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    np.testing.assert_allclose(encoder.embed(windows), unit, rtol=1e-6)


def test_without_postprocess_needs_no_pca_file(plain_encoder: VGGishEncoder) -> None:
    plain = plain_encoder
    assert re.fullmatch(r"vggish-[0-9a-f]{8}", plain.info.encoder_id)  # no "-pca" suffix
    windows = _windows(2)
    raw = plain.embed_raw(windows)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(plain.embed(windows), expected, rtol=1e-5)
    with pytest.raises(ModelError, match="post-processing is disabled"):
        plain.embed_quantised(windows)


def test_default_dir_is_under_data_dir(tmp_path: Path, torch: ModuleType) -> None:
    with pytest.raises(ModelError) as caught:
        VGGishEncoder.from_config(EncoderConfig(name="vggish"), data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "models" / "vggish" / VGGISH_WEIGHTS) in message
    assert "tunetrace models fetch vggish" in message
    assert f"releases/download/v0.1/{VGGISH_WEIGHTS}" in message


def test_missing_pca_file_is_named(model_dir: Path, tmp_path: Path, torch: ModuleType) -> None:
    (tmp_path / VGGISH_WEIGHTS).symlink_to(model_dir / VGGISH_WEIGHTS)
    with pytest.raises(ModelError, match=VGGISH_PCA_PARAMS):
        VGGishEncoder.from_files(tmp_path, postprocess=True)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"features.0.weight": 1, "classifier.0.weight": 2}, r"unexpected keys \['classifier"),
        (dict.fromkeys(expected_state_shapes()), r"features\.0\.weight should be a tensor"),
        ([1, 2, 3], "expected a state dict"),
    ],
)
def test_malformed_weights_raise_model_error(
    state: object, message: str, tmp_path: Path, torch: ModuleType
) -> None:
    torch.save(state, tmp_path / VGGISH_WEIGHTS)
    with pytest.raises(ModelError, match=message):
        VGGishEncoder.from_files(tmp_path, postprocess=False)


def test_wrong_shape_is_reported(tmp_path: Path, torch: ModuleType) -> None:
    state = {key: torch.zeros(1) for key in expected_state_shapes()}
    torch.save(state, tmp_path / VGGISH_WEIGHTS)
    with pytest.raises(ModelError, match=r"features\.0\.weight.*\(64, 1, 3, 3\).*\(1,\)"):
        VGGishEncoder.from_files(tmp_path, postprocess=False)


def test_garbage_file_is_model_error(tmp_path: Path, torch: ModuleType) -> None:
    (tmp_path / VGGISH_WEIGHTS).write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        VGGishEncoder.from_files(tmp_path, postprocess=False)


def test_pca_file_errors(tmp_path: Path, torch: ModuleType) -> None:
    path = tmp_path / VGGISH_PCA_PARAMS
    _save_numpy1_pickle({"pca_eigen_vectors": np.eye(128)}, path, torch)
    with pytest.raises(ModelError, match="missing key 'pca_means'"):
        vggish.load_pca_params(torch, path)
    _save_numpy1_pickle({"pca_eigen_vectors": np.eye(64), "pca_means": np.zeros(128)}, path, torch)
    with pytest.raises(ModelError, match=r"\(64, 64\)"):
        vggish.load_pca_params(torch, path)
    torch.save({"pca_eigen_vectors": torch.eye(128), "pca_means": torch.zeros(128, 1)}, path)
    params = vggish.load_pca_params(torch, path)  # tensors and a column of means also load
    assert params.means.shape == (128,)


def test_missing_torch_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModelError, match=r"pip install 'tunetrace\[vggish\]'"):
        vggish.import_torch()
