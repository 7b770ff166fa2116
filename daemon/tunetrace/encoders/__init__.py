"""Encoders turn fixed-length audio windows into vectors; one Protocol, chosen by name in config.

Each implementation imports its heavy library (onnxruntime, torch) only in its own module, and
only when selected.
"""

from __future__ import annotations

from pathlib import Path

from tunetrace.config import EncoderConfig
from tunetrace.encoders.base import Encoder, EncoderInfo
from tunetrace.errors import ConfigError

__all__ = ["Encoder", "EncoderInfo", "create_encoder"]


def create_encoder(config: EncoderConfig, data_dir: Path | None = None) -> Encoder:
    """Build the encoder named in ``config`` (its weights are loaded here, once).

    ``data_dir`` is where downloaded weights live (``<data_dir>/models/<name>``) unless
    ``encoder.model_path`` says otherwise.
    """
    if config.name == "spectral":
        from tunetrace.encoders.spectral import SpectralEncoder

        return SpectralEncoder()
    if config.name == "vggish":
        from tunetrace.encoders.vggish import VGGishEncoder

        return VGGishEncoder.from_config(config, data_dir=data_dir)
    if config.name == "fingerprint":
        from tunetrace.encoders.fingerprint import FingerprintEncoder

        return FingerprintEncoder.from_config(config)
    raise ConfigError(f"encoder.name: unknown encoder {config.name!r}; use fingerprint, spectral or vggish")
