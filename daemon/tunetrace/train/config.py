"""Typed training configuration, loaded from its own YAML (``config/train.yaml``).

Kept apart from the daemon's config so that a deployment never sees training knobs.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunetrace.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    path: Path


class DataConfig(_Section):
    cache_dir: Path = Path("/work/data/fp")
    """Decoded 8 kHz mono float32 ``.npy`` tracks, one folder per source."""
    train_sources: tuple[SourceConfig, ...] = ()
    val_sources: tuple[SourceConfig, ...] = ()
    """Never trained on: only used for the validation metric and the quick evaluation."""
    holdout_sources: tuple[SourceConfig, ...] = ()
    """Music in neither set: the quick evaluation's interfering music and its false-positive
    negatives (unset: the last training source, which flatters both figures)."""
    codecs: tuple[str, ...] = ("libmp3lame:64", "libmp3lame:128", "aac:64")
    """``ffmpeg-encoder:kbit/s`` copies precomputed by ``prepare --codecs``."""


class AugmentConfig(_Section):
    snr_db: tuple[float, float] = (0.0, 20.0)
    noise_probability: float = Field(default=0.85, ge=0, le=1)
    noise_kinds: tuple[str, ...] = ("white", "pink", "music")
    reverb_probability: float = Field(default=0.5, ge=0, le=1)
    rt60_s: tuple[float, float] = (0.15, 1.0)
    eq_probability: float = Field(default=0.6, ge=0, le=1)
    codec_probability: float = Field(default=0.3, ge=0, le=1)
    speed_max: float = Field(default=0.05, ge=0, lt=0.5)
    """Playback speed ratio drawn uniformly from ``1 ± speed_max`` (resampling: pitch changes too)."""
    offset_max_s: float = Field(default=0.25, ge=0)
    """Augmented window shifted by up to this much (half the catalog hop)."""
    gain_db: tuple[float, float] = (-12.0, 6.0)


class ModelConfig(_Section):
    n_mels: int = 64
    n_fft: int = 512
    mel_hop: int = 128
    fmin_hz: float = 150.0
    fmax_hz: float = 3900.0
    log_offset: float = 1e-3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    dimension: int = 128


class OptimConfig(_Section):
    steps: int = Field(default=6000, ge=1)
    batch_pairs: int = Field(default=128, ge=2)
    lr: float = Field(default=1e-3, gt=0)
    warmup_steps: int = Field(default=200, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    temperature: float = Field(default=0.05, gt=0)


class TrainConfig(_Section):
    seed: int = 20261126
    run_dir: Path = Path("/work/runs/fp")
    threads: int = Field(default=2, ge=1)
    checkpoint_every_s: float = Field(default=300.0, gt=0)
    log_every_steps: int = Field(default=20, ge=1)
    val_every_steps: int = Field(default=250, ge=1)
    val_pairs: int = Field(default=512, ge=8)
    export_path: Path | None = None
    """Where each checkpoint also exports ONNX (``None``: ``<run_dir>/fingerprint.onnx``)."""
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()


def load_train_config(path: Path | None) -> TrainConfig:
    """Read ``path`` (YAML); ``None`` gives the defaults."""
    if path is None:
        return TrainConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read training config: {exc}") from None
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid training config:\n  " + "\n  ".join(problems)) from None
