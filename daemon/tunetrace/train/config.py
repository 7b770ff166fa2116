"""Typed training configuration, loaded from its own YAML (``config/train.yaml``).

Kept apart from the daemon's config so that a deployment never sees training knobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunetrace.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """One corpus: a folder, a zip archive (``.pk3``/``.zip``) or a Flight of the Amazon Queen
    ``queen.1c`` resource file, on this machine or inside a Debian package that ``prepare``
    unpacks itself (``apt-get download`` + ``dpkg-deb -x``, never installed)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    path: Path
    """Absolute, or relative to the unpacked ``package`` when one is named."""
    package: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9+.-]+$")
    """Debian package holding ``path`` (unpacked under ``data.package_cache_dir``)."""
    include: tuple[str, ...] = ()
    """Glob patterns (relative to ``path``, or zip member names) a file must match; empty: all audio."""
    exclude: tuple[str, ...] = ()
    """Glob patterns of files to leave out even when ``include`` matches them."""
    min_duration_s: float = Field(default=4.0, ge=0)
    """Shorter files are skipped: 30 s keeps a game's music and drops its sound effects."""

    @model_validator(mode="after")
    def _path_fits_package(self) -> SourceConfig:
        if self.package is not None and self.path.is_absolute():
            raise ValueError(
                f"path {self.path} must be relative to the unpacked package {self.package} "
                "(e.g. usr/share/games/...)"
            )
        if self.package is None and not self.path.is_absolute():
            raise ValueError(f"path {self.path} must be absolute, or name the Debian package that holds it")
        return self


class DataConfig(_Section):
    cache_dir: Path = Path("/work/data/fp")
    """Decoded 8 kHz mono float32 ``.npy`` tracks, one folder per source."""
    package_cache_dir: Path = Path("/var/cache/tunetrace-packages")
    """Where Debian packages named by sources are unpacked (outside the repository)."""
    train_sources: tuple[SourceConfig, ...] = ()
    val_sources: tuple[SourceConfig, ...] = ()
    """Never trained on: only used for the validation metric and the quick evaluation."""
    holdout_sources: tuple[SourceConfig, ...] = ()
    """Music in neither set: the quick evaluation's interfering music and its false-positive
    negatives (unset: the last training source, which flatters both figures)."""
    speech_sources: tuple[SourceConfig, ...] = ()
    """Recorded human speech talked over the music (``augment.speech_probability``). Never the
    evaluation's held-out speech (``evaluation.packages.HELD_OUT_SPEECH``): refused on load."""
    codecs: tuple[str, ...] = ("libmp3lame:64", "libmp3lame:128", "aac:64")
    """``ffmpeg-encoder:kbit/s`` copies precomputed by ``prepare --codecs``."""
    variants: tuple[str, ...] = ()
    """Named copies precomputed by ``prepare --codecs`` from ``train.data.VARIANTS`` (broadcast
    chain, low-bitrate AAC/Opus, pitch shift, time stretch): too slow to make on the fly."""

    @model_validator(mode="after")
    def _check_sources_and_variants(self) -> DataConfig:
        from tunetrace.evaluation.packages import HELD_OUT_SPEECH
        from tunetrace.train.data import VARIANTS

        unknown = [name for name in self.variants if name not in VARIANTS]
        if unknown:
            raise ValueError(f"variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

        for source in (*self.train_sources, *self.speech_sources):
            if source.package == HELD_OUT_SPEECH or HELD_OUT_SPEECH in source.path.parts:
                raise ValueError(
                    f"source {source.name}: {HELD_OUT_SPEECH} is the evaluation's held-out speech; "
                    "train on another speech package"
                )
        held_out = {(s.package, s.path) for s in (*self.val_sources, *self.holdout_sources)}
        for source in self.train_sources:
            if (source.package, source.path) in held_out:
                raise ValueError(
                    f"train source {source.name} is also a validation or hold-out source; "
                    "music is either trained on or measured on, never both"
                )
        return self


class AugmentConfig(_Section):
    snr_db: tuple[float, float] = (0.0, 20.0)
    """Music over noise or other music, dB, drawn uniformly (the issue asks for down to -5)."""
    noise_probability: float = Field(default=0.85, ge=0, le=1)
    noise_kinds: tuple[Literal["white", "pink", "music"], ...] = ("white", "pink", "music")
    speech_probability: float = Field(default=0.0, ge=0, le=1)
    """A presenter talking over the music (needs ``data.speech_sources``), on top of any noise."""
    speech_snr_db: tuple[float, float] = (-5.0, 15.0)
    """Music over speech, dB, drawn uniformly."""
    reverb_probability: float = Field(default=0.5, ge=0, le=1)
    rt60_s: tuple[float, float] = (0.15, 1.0)
    eq_probability: float = Field(default=0.6, ge=0, le=1)
    codec_probability: float = Field(default=0.3, ge=0, le=1)
    """Read the degraded side from a lossy copy (``data.codecs`` and codec ``data.variants``)."""
    stretch_probability: float = Field(default=0.0, ge=0, le=1)
    """Read it from a pitch-shifted or time-stretched copy (those ``data.variants``)."""
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
    """One stage per entry: a stride-2 3x3 conv to this many channels (wider: larger numbers)."""
    blocks_per_stage: int = Field(default=1, ge=1, le=4)
    """Convolutions per stage: the first strides, the rest are 3x3 stride 1 (deeper: 2)."""
    dimension: int = 128
    window_s: float = Field(default=1.0, ge=0.5, le=4.0)
    """Seconds of audio per embedding (1 or 2 are the candidates); written to the sidecar."""


class OptimConfig(_Section):
    steps: int = Field(default=6000, ge=1)
    batch_pairs: int = Field(default=128, ge=2)
    lr: float = Field(default=1e-3, gt=0)
    warmup_steps: int = Field(default=200, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    temperature: float = Field(default=0.05, gt=0)
    """NT-Xent only."""
    loss: Literal["nt_xent", "triplet"] = "nt_xent"
    """``triplet``: self-supervised triplet loss with the hardest in-batch negative."""
    margin: float = Field(default=0.3, gt=0, le=2)
    """Triplet only: cosine margin between the positive and the hardest negative."""
    nt_xent_warmup_steps: int = Field(default=0, ge=0)
    """Train the first steps with NT-Xent whatever ``loss`` says: from a random start the hardest-
    negative triplet loss collapses every vector onto one point (measured: cosine 0.99 between
    unrelated windows after 40 steps), NT-Xent spreads them first."""


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


EXTENDS_KEY = "extends"
"""A candidate recipe names the YAML it changes (relative to itself) and lists only what differs."""


def _merge(base: dict[str, object], override: dict[str, object]) -> dict[str, object]:
    """``override`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        below = merged.get(key)
        if isinstance(below, dict) and isinstance(value, dict):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, object]:
    """The mapping in ``path``, with any ``extends:`` chain resolved."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself; point it at the base recipe")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read training config: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config is a YAML mapping of keys, not {type(data).__name__}")
    base = data.pop(EXTENDS_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `extends` names another training YAML, e.g. `extends: train.yaml`")
    return _merge(_read_yaml(path.parent / base, (*seen, path.resolve())), data)


def load_train_config(path: Path | None) -> TrainConfig:
    """Read ``path`` (YAML, optionally ``extends:`` another); ``None`` gives the defaults."""
    if path is None:
        return TrainConfig()
    data = _read_yaml(path)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid training config:\n  " + "\n  ".join(problems)) from None
