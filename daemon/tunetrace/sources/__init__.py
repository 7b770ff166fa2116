"""Audio sources: each yields mono float32 blocks at the encoder's rate; see ``base`` for the contract."""

from __future__ import annotations

from tunetrace.backoff import Backoff, BackoffPolicy
from tunetrace.config import SourceConfig
from tunetrace.errors import SourceError
from tunetrace.sources.base import (
    AudioBlock,
    AudioSource,
    RunnerParams,
    SourceGap,
    SourceRunner,
    SourceState,
)

__all__ = [
    "AudioBlock", "AudioSource", "Backoff", "BackoffPolicy", "RunnerParams", "SourceError", "SourceGap",
    "SourceRunner", "SourceState", "create_source", "runner_params",
]


def create_source(config: SourceConfig, sample_rate: int) -> AudioSource:
    """The source a station's config describes (sounddevice is imported only for ``soundcard``)."""
    if config.kind == "soundcard":
        from tunetrace.sources.soundcard import SoundcardSource

        return SoundcardSource(
            config.device, sample_rate, capture_rate_hz=config.capture_rate_hz, channels=config.channels,
        )
    from tunetrace.sources.ffmpeg import FfmpegSource

    assert config.url is not None  # enforced by SourceConfig's validator
    return FfmpegSource(config.url, sample_rate, realtime=config.realtime, loop=config.loop)


def runner_params(config: SourceConfig, sample_rate: int) -> RunnerParams:
    return RunnerParams(
        sample_rate=sample_rate,
        backoff=BackoffPolicy(config.reconnect_initial_s, config.reconnect_max_s),
        stall_timeout_s=config.stall_timeout_s,
        silence_threshold_dbfs=config.silence_threshold_dbfs,
        silence_after_s=config.silence_after_s,
    )
