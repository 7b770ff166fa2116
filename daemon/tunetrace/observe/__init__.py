"""Seeing the daemon from outside: metrics, the HTTP API and status page, and log formatting.

``base`` holds the small interfaces the pipeline reports through (no third-party import), so
recognition never imports ``prometheus_client`` (``metrics``) or ``aiohttp`` (``http``).
"""

from tunetrace.observe.base import (
    MqttStatus,
    NullMetrics,
    NullStationMetrics,
    PipelineMetrics,
    StationMetrics,
    StationStatus,
)

__all__ = [
    "MqttStatus", "NullMetrics", "NullStationMetrics", "PipelineMetrics", "StationMetrics", "StationStatus",
]
