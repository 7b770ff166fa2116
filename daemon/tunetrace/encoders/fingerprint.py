"""The neural audio fingerprint: NumPy log-mel front end + a small ONNX conv encoder.

The model (trained by ``tunetrace train``, see ``docs/models.md``) ships inside the package as
``models/fingerprint.onnx`` with a JSON sidecar holding the front-end parameters it was trained
with. Only onnxruntime is needed here; torch never is. The encoder id embeds the first 12 hex
digits of the ONNX file's SHA-256, so a catalog built by another model version is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tunetrace.audio.features import MelSpec, log_mel
from tunetrace.config import EncoderConfig
from tunetrace.encoders.base import EncoderInfo, l2_normalise
from tunetrace.errors import ModelError
from tunetrace.hashing import file_sha256

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "fingerprint.onnx"
SIDECAR_FORMAT = "tunetrace-fingerprint/1"
ID_HASH_CHARS = 12


def _read_sidecar(model_path: Path) -> dict[str, Any]:
    sidecar = model_path.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except OSError:
        raise ModelError(
            f"{sidecar}: the fingerprint model's sidecar is missing; export model and sidecar together "
            "with `tunetrace train export --out <path>.onnx`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{sidecar}: not valid JSON ({exc.msg}); re-export the model") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ModelError(f"{sidecar}: not a {SIDECAR_FORMAT} sidecar; re-export the model")
    return data


def mel_spec_from_sidecar(sidecar: dict[str, Any]) -> MelSpec:
    """The front end the model was trained with, exactly as the sidecar records it."""
    try:
        fe = sidecar["front_end"]
        return MelSpec(
            sample_rate=int(sidecar["sample_rate"]),
            n_fft=int(fe["n_fft"]),
            win_length=int(fe["win_length"]),
            hop_length=int(fe["hop_length"]),
            n_mels=int(fe["n_mels"]),
            fmin_hz=float(fe["fmin_hz"]),
            fmax_hz=float(fe["fmax_hz"]),
            log_offset=float(fe["log_offset"]),
            magnitude=bool(fe["magnitude"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"fingerprint sidecar lacks front-end field {exc}; re-export the model") from None


class FingerprintEncoder:
    """onnxruntime session over NumPy log-mel patches; outputs unit vectors (inner product metric)."""

    def __init__(self, model_path: Path = SHIPPED_MODEL, threads: int = 1) -> None:
        if not model_path.is_file():
            raise ModelError(
                f"{model_path}: fingerprint model not found; reinstall tunetrace (the model ships in the "
                "package), set encoder.model_path to an exported .onnx, train one with "
                "`tunetrace train fit` + `tunetrace train export`, or use encoder.name: spectral"
            )
        sidecar = _read_sidecar(model_path)
        digest = file_sha256(model_path)
        recorded = sidecar.get("sha256")
        if recorded and recorded != digest:
            raise ModelError(
                f"{model_path}: SHA-256 {digest[:12]}… differs from its sidecar's {str(recorded)[:12]}…; "
                "the .onnx and .json belong to different exports"
            )
        self._spec = mel_spec_from_sidecar(sidecar)
        self._window_samples = round(float(sidecar["window_s"]) * self._spec.sample_rate)
        self._info = EncoderInfo(
            encoder_id=f"fingerprint-{digest[:ID_HASH_CHARS]}",
            sample_rate=self._spec.sample_rate,
            window_s=float(sidecar["window_s"]),
            hop_s=float(sidecar["hop_s"]),
            dimension=int(sidecar["dimension"]),
            metric="IP",
        )
        self._session = self._open(model_path, threads)
        self._input_name = str(sidecar.get("input", {}).get("name", "log_mel"))

    @staticmethod
    def _open(model_path: Path, threads: int) -> Any:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - onnxruntime is a core dependency
            raise ModelError("onnxruntime is not installed; pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{model_path}: onnxruntime cannot load the model: {exc}") from None

    @classmethod
    def from_config(cls, config: EncoderConfig) -> FingerprintEncoder:
        return cls(config.model_path or SHIPPED_MODEL, config.threads)

    @property
    def info(self) -> EncoderInfo:
        return self._info

    @property
    def mel_spec(self) -> MelSpec:
        return self._spec

    def embed(self, windows: np.ndarray) -> np.ndarray:
        batch = np.asarray(windows, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self._window_samples:
            raise ValueError(f"expected (n, {self._window_samples}) windows, got {batch.shape}")
        if batch.shape[0] == 0:
            return np.zeros((0, self._info.dimension), np.float32)
        patches = log_mel(batch, self._spec)
        (vectors,) = self._session.run(None, {self._input_name: patches})
        return l2_normalise(np.asarray(vectors, dtype=np.float32))
