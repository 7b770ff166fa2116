"""Export a trained ``FingerprintNet`` to ONNX plus the JSON sidecar inference relies on.

The ONNX graph starts at the log-mel patch (the NumPy front end computes it at inference, which is
faster than an ONNX STFT on CPU); the sidecar records that front end's parameters so inference
cannot silently drift from training.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from tunetrace.hashing import file_sha256
from tunetrace.train.config import TrainConfig
from tunetrace.train.model import SAMPLE_RATE, FingerprintNet, count_parameters, mel_spec, window_samples

OPSET = 17
HOP_S = 0.5
INPUT_NAME = "log_mel"
OUTPUT_NAME = "embedding"


def git_commit(repo_dir: Path) -> str:
    """The commit the training code came from ("unknown" outside a git checkout)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "HEAD"],
            capture_output=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.decode().strip() if result.returncode == 0 else "unknown"


def export_onnx(
    model: FingerprintNet, config: TrainConfig, out: Path, training: dict[str, Any]
) -> dict[str, Any]:
    """Write ``out`` (ONNX, dynamic batch) and ``out.with_suffix('.json')``; return the sidecar."""
    spec = mel_spec(config.model)
    n_frames = spec.n_frames(window_samples(config.model))
    model = model.eval().cpu()
    example = torch.zeros(2, n_frames, spec.n_mels)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    tmp.replace(out)
    sidecar: dict[str, Any] = {
        "format": "tunetrace-fingerprint/1",
        "sample_rate": SAMPLE_RATE,
        "window_s": config.model.window_s,
        "hop_s": HOP_S,
        "dimension": config.model.dimension,
        "metric": "IP",
        "input": {"name": INPUT_NAME, "shape": ["batch", n_frames, spec.n_mels]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", config.model.dimension]},
        "front_end": {
            "n_fft": spec.n_fft,
            "win_length": spec.win_length,
            "hop_length": spec.hop_length,
            "n_mels": spec.n_mels,
            "fmin_hz": spec.fmin_hz,
            "fmax_hz": spec.fmax_hz,
            "log_offset": spec.log_offset,
            "magnitude": spec.magnitude,
            "window": "periodic hann",
            "mel_scale": "htk",
        },
        "parameters": count_parameters(model),
        "opset": OPSET,
        "training": training,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sha256": file_sha256(out),
    }
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return sidecar


def load_checkpoint_model(config: TrainConfig, checkpoint: Path) -> tuple[FingerprintNet, dict[str, Any]]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    spec = mel_spec(config.model)
    model = FingerprintNet(config.model, spec.n_frames(window_samples(config.model)))
    model.load_state_dict(state["model"])
    return model, dict(state.get("training", {}))


def export_checkpoint(config: TrainConfig, checkpoint: Path, out: Path) -> dict[str, Any]:
    model, training = load_checkpoint_model(config, checkpoint)
    return export_onnx(model, config, out, training)
