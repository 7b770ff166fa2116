"""VGGish (Hershey et al., 2017): the published AudioSet embedding, run with PyTorch.

Front end, as in the reference ``vggish_input.py`` / ``mel_features.py``: 16 kHz mono, 25 ms
periodic-Hann frames (400 samples) every 10 ms (160), |rfft| with n_fft 512, 64 HTK-mel bands from
125 to 7500 Hz, ``log(mel + 0.01)``; one example is 96 frames x 64 bands.
``tunetrace.audio.features.log_mel`` already computes exactly that (same framing without centring, same
window, same mel-domain triangles with the DC bin zeroed; it works in float32 where the reference
uses float64, a difference of ~1e-6 in log units), so it is reused unchanged.

Window length: 96 frames span ``95 * 160 + 400 = 15600`` samples (0.975 s), not 0.96 s.  The
reference frames a whole file into 10 ms frames and then groups 96 of them per example (an
example *hop* of 0.96 s), so each example really sees 0.975 s of audio; 0.96 s of audio yields only
94 frames.  ``WINDOW_S`` is therefore 0.975 so every window maps to exactly one reference example.

Network and weights follow the PyTorch port ``harritaylor/torchvggish`` (state-dict keys
``features.{0,3,6,8,11,13}.*`` and ``embeddings.{0,2,4}.*``, final ReLU included), and the
optional post-processing follows ``vggish_postprocess.py``: PCA whitening, clip to [-2, 2] and
8-bit quantisation.

torch is imported lazily so that the rest of tunetrace runs without the ``vggish`` extra.
"""

from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from tunetrace.audio.features import MelSpec, log_mel
from tunetrace.config import EncoderConfig
from tunetrace.encoders.base import EncoderInfo, l2_normalise
from tunetrace.encoders.weights import (
    MODELS,
    VGGISH_PCA_PARAMS,
    VGGISH_WEIGHTS,
    default_model_dir,
    file_url,
)
from tunetrace.errors import ModelError
from tunetrace.hashing import file_sha256

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
MEL = MelSpec(
    sample_rate=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=160, n_mels=64,
    fmin_hz=125.0, fmax_hz=7500.0, log_offset=0.01, magnitude=True,
)
EXAMPLE_FRAMES = 96
WINDOW_SAMPLES = (EXAMPLE_FRAMES - 1) * MEL.hop_length + MEL.win_length
WINDOW_S = WINDOW_SAMPLES / SAMPLE_RATE
"""0.975 s: the audio one 96-frame example covers (see the module docstring)."""
HOP_S = 0.48
"""Catalog hop, half the reference example hop (0.96 s); 48 frames, so frames stay on one grid."""
DIMENSION = 128
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0

_CONV_PLAN: tuple[int | None, ...] = (64, None, 128, None, 256, 256, None, 512, 512, None)
"""Conv3x3 output channels, ``None`` = 2x2 max-pool; layer indices match torchvggish's."""
_FC_SIZES = (512 * 6 * 4, 4096, 4096, DIMENSION)
"""After four poolings a 96x64 patch is 6x4 with 512 channels, flattened channels-last."""


def expected_state_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of a torchvggish ``vggish-*.pth`` state dict and its tensor shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    index, in_channels = 0, 1
    for out_channels in _CONV_PLAN:
        if out_channels is None:
            index += 1  # pooling layer: no parameters
            continue
        shapes[f"features.{index}.weight"] = (out_channels, in_channels, 3, 3)
        shapes[f"features.{index}.bias"] = (out_channels,)
        index += 2  # conv + ReLU
        in_channels = out_channels
    for layer, (n_in, n_out) in enumerate(itertools.pairwise(_FC_SIZES)):
        shapes[f"embeddings.{2 * layer}.weight"] = (n_out, n_in)
        shapes[f"embeddings.{2 * layer}.bias"] = (n_out,)
    return shapes


def log_mel_examples(windows: np.ndarray) -> np.ndarray:
    """(n, 15600) audio in [-1, 1] -> (n, 96, 64) float32 log-mel examples (the network input)."""
    batch = np.atleast_2d(np.asarray(windows, dtype=np.float32))
    if batch.ndim != 2 or batch.shape[1] != WINDOW_SAMPLES:
        raise ValueError(
            f"vggish: expected windows of shape (n, {WINDOW_SAMPLES}) at {SAMPLE_RATE} Hz, "
            f"got {batch.shape}"
        )
    return log_mel(batch, MEL)


@dataclass(frozen=True)
class PcaParams:
    """VGGish's released PCA whitening: ``eigen_vectors`` (128, 128) rows, ``means`` (128,)."""

    eigen_vectors: np.ndarray
    means: np.ndarray


def postprocess(raw: np.ndarray, pca: PcaParams) -> np.ndarray:
    """Raw (n, 128) embeddings -> the published uint8 form, as ``vggish_postprocess.py``.

    PCA-whiten (``E @ (x - mean)``), clip to [-2, 2], map linearly onto 0..255 and round.
    """
    centred = np.asarray(raw, dtype=np.float64) - pca.means[None, :]
    whitened = centred @ pca.eigen_vectors.T
    clipped = np.clip(whitened, QUANTIZE_MIN, QUANTIZE_MAX)
    scaled = (clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))
    quantised: np.ndarray = np.round(scaled).astype(np.uint8)
    return quantised


def dequantise(quantised: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 in [-1, 1], centred on the code of a zero whitened value (127.5).

    Centring matters for the inner-product metric: unshifted codes all point into the positive
    orthant, and every pair of vectors would look similar.
    """
    return ((quantised.astype(np.float32) - 127.5) / 127.5).astype(np.float32)


def import_torch() -> ModuleType:
    """``torch``, or a ``ModelError`` that says how to install it."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ModelError(
            "the vggish encoder needs PyTorch, which is not installed: "
            "pip install 'tunetrace[vggish]'"
        ) from exc


def build_network(torch_mod: ModuleType) -> torch.nn.ModuleDict:
    """The torchvggish architecture, with module names that give its state-dict keys."""
    nn = torch_mod.nn
    layers: list[Any] = []
    in_channels = 1
    for out_channels in _CONV_PLAN:
        if out_channels is None:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    fc: list[Any] = []
    for n_in, n_out in itertools.pairwise(_FC_SIZES):
        fc += [nn.Linear(n_in, n_out), nn.ReLU()]
    network: torch.nn.ModuleDict = nn.ModuleDict(
        {"features": nn.Sequential(*layers), "embeddings": nn.Sequential(*fc)}
    )
    return network.eval()


def _safe_load(torch_mod: ModuleType, path: Path) -> object:
    """``torch.load`` restricted to tensors and plain NumPy arrays (no arbitrary pickles).

    The released PCA file holds NumPy arrays pickled by NumPy 1.x (``numpy.core...``), which
    ``weights_only`` loading refuses unless the array-rebuilding globals are allow-listed; the
    NumPy 1.x names are mapped onto NumPy 2's ``numpy._core`` functions.
    """
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    from numpy._core.multiarray import _reconstruct

    allowed: list[Any] = [
        _reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray, np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float64)),
    ]
    try:
        with torch_mod.serialization.safe_globals(allowed):
            return torch_mod.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def load_vggish_state(torch_mod: ModuleType, path: Path) -> dict[str, torch.Tensor]:
    """Load and check a torchvggish state dict: exact key set and shapes, cast to float32."""
    state = _safe_load(torch_mod, path)
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict, found {type(state).__name__}")
    expected = expected_state_shapes()
    keys = {str(key) for key in state}
    missing = sorted(set(expected) - keys)
    unexpected = sorted(keys - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"{path}: not a torchvggish VGGish state dict; missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    checked: dict[str, torch.Tensor] = {}
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch_mod.Tensor) or tuple(value.shape) != shape:
            found = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
            raise ModelError(f"{path}: {key} should be a tensor of shape {shape}, found {found}")
        checked[key] = value.detach().to(torch_mod.float32)
    return checked


def load_pca_params(torch_mod: ModuleType, path: Path) -> PcaParams:
    """Load ``pca_eigen_vectors`` (128, 128) and ``pca_means`` (128,) or (128, 1)."""
    state = _safe_load(torch_mod, path)
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a dict of PCA parameters, found {type(state).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key in ("pca_eigen_vectors", "pca_means"):
        if key not in state:
            raise ModelError(f"{path}: missing key {key!r} (found {sorted(map(str, state))[:5]})")
        value = state[key]
        if isinstance(value, torch_mod.Tensor):
            value = value.detach().cpu().numpy()
        if not isinstance(value, np.ndarray):
            raise ModelError(f"{path}: {key} should be an array, found {type(value).__name__}")
        arrays[key] = value.astype(np.float64)
    vectors, means = arrays["pca_eigen_vectors"], arrays["pca_means"]
    if vectors.shape != (DIMENSION, DIMENSION) or means.size != DIMENSION:
        raise ModelError(
            f"{path}: expected pca_eigen_vectors {(DIMENSION, DIMENSION)} and pca_means "
            f"({DIMENSION},), found {vectors.shape} and {means.shape}"
        )
    return PcaParams(vectors, means.reshape(DIMENSION))


def _missing_file_error(path: Path, model_dir: Path) -> ModelError:
    """Say which file to place where, and both ways to get it (fetch, or copy by hand)."""
    what = (
        "VGGish PCA parameters (needed while encoder.vggish_postprocess is true)"
        if path.name == VGGISH_PCA_PARAMS else "VGGish weights"
    )
    return ModelError(
        f"{what} not found: {path}. Run `tunetrace models fetch vggish`, or on an offline "
        f"machine download {file_url(MODELS['vggish'], path.name)} and place it at {path} "
        f"(directory {model_dir}, set by encoder.model_path)"
    )


class VGGishEncoder:
    """VGGish embeddings, optionally PCA-whitened and quantised, L2-normalised for ``IP``."""

    def __init__(
        self,
        network: torch.nn.ModuleDict,
        *,
        weights_sha256: str,
        pca: PcaParams | None,
        batch_size: int = 64,
    ) -> None:
        self._torch = import_torch()
        self._network = network.eval()
        self._pca = pca
        self._batch_size = max(1, batch_size)
        encoder_id = f"vggish-{weights_sha256[:8]}" + ("-pca" if pca is not None else "")
        self._info = EncoderInfo(encoder_id, SAMPLE_RATE, WINDOW_S, HOP_S, DIMENSION, "IP")

    @classmethod
    def from_files(
        cls,
        model_dir: Path,
        *,
        postprocess: bool = True,
        threads: int = 1,
        batch_size: int = 64,
    ) -> VGGishEncoder:
        """Load ``vggish-10086976.pth`` (and, with ``postprocess``, the PCA file) from a directory.

        ``threads`` sets torch's intra-op thread count, which is process-wide.
        """
        torch_mod = import_torch()
        if model_dir.exists() and not model_dir.is_dir():
            raise ModelError(f"{model_dir}: encoder.model_path must be the weights' directory")
        weights = model_dir / VGGISH_WEIGHTS
        pca_path = model_dir / VGGISH_PCA_PARAMS
        for needed in (weights, pca_path) if postprocess else (weights,):
            if not needed.is_file():
                raise _missing_file_error(needed, model_dir)
        state = load_vggish_state(torch_mod, weights)
        with torch_mod.device("meta"):  # no random init of 70M parameters about to be replaced
            network = build_network(torch_mod)
        network.load_state_dict(state, strict=True, assign=True)
        pca = load_pca_params(torch_mod, pca_path) if postprocess else None
        torch_mod.set_num_threads(threads)
        return cls(network, weights_sha256=file_sha256(weights), pca=pca, batch_size=batch_size)

    @classmethod
    def from_config(cls, config: EncoderConfig, *, data_dir: Path | None = None) -> VGGishEncoder:
        """Build from config: weights in ``encoder.model_path`` or ``<data_dir>/models/vggish``.

        ``EncoderConfig`` does not carry the root ``data_dir``, so callers that know it pass it;
        without it the default data directory (``STATE_DIRECTORY`` / XDG) is used.
        """
        model_dir = config.model_path or default_model_dir("vggish", data_dir)
        return cls.from_files(
            model_dir,
            postprocess=config.vggish_postprocess,
            threads=config.threads,
            batch_size=config.batch_size,
        )

    @property
    def info(self) -> EncoderInfo:
        return self._info

    def embed_raw(self, windows: np.ndarray) -> np.ndarray:
        """(n, 15600) audio -> (n, 128) float32 network output, before PCA and normalisation."""
        examples = log_mel_examples(windows)
        out = np.zeros((examples.shape[0], DIMENSION), np.float32)
        torch_mod = self._torch
        with torch_mod.inference_mode():
            for start in range(0, examples.shape[0], self._batch_size):
                chunk = torch_mod.from_numpy(examples[start : start + self._batch_size])
                out[start : start + chunk.shape[0]] = self._forward(chunk[:, None]).numpy()
        return out

    def embed_quantised(self, windows: np.ndarray) -> np.ndarray:
        """(n, 15600) audio -> (n, 128) uint8: the published AudioSet embedding format."""
        if self._pca is None:
            raise ModelError("vggish: post-processing is disabled (encoder.vggish_postprocess)")
        return postprocess(self.embed_raw(windows), self._pca)

    def embed(self, windows: np.ndarray) -> np.ndarray:
        if windows.shape[0] == 0:
            return np.zeros((0, DIMENSION), np.float32)
        if self._pca is None:
            return l2_normalise(self.embed_raw(windows))
        return l2_normalise(dequantise(self.embed_quantised(windows)))

    def _forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(n, 1, 96, 64) -> (n, 128); flattens channels-last, as the TF original did."""
        features = self._network["features"](patches)
        flat = features.permute(0, 2, 3, 1).reshape(features.shape[0], -1)
        result: torch.Tensor = self._network["embeddings"](flat)
        return result
