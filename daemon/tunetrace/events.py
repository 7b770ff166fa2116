"""The values the live daemon produces: plays, the events that start and end them, station health."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal
from uuid import uuid4

EventKind = Literal["play_started", "play_ended"]


@dataclass(frozen=True)
class Play:
    """One recording heard on one station, from its start to its end."""

    play_id: str
    station: str
    track_id: int
    title: str
    artist: str
    album: str
    started_at: datetime
    """UTC wall-clock time the recording started on the station (not when it was confirmed)."""
    position_start_s: float
    """Where in the track the station was at ``started_at``."""
    confidence: float
    ended_at: datetime | None = None
    position_end_s: float | None = None
    speed_ratio: float | None = None
    isrc: str = ""
    """The recording's ISRC from the catalog (``""``: the catalog has none; ``null`` in JSON)."""

    @property
    def duration_s(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    def ended(self, at: datetime, position_s: float) -> Play:
        return replace(self, ended_at=at, position_end_s=position_s)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Play:
        """The inverse of ``to_json`` (reading the play log back); raises ``KeyError``/``ValueError``
        on a record that is not a play."""
        ended_at = data.get("ended_at")
        speed = data.get("speed_ratio")
        position_end = data.get("position_end_s")
        return cls(
            play_id=str(data["play_id"]), station=str(data["station"]), track_id=int(data["track_id"]),
            title=str(data.get("title") or ""), artist=str(data.get("artist") or ""),
            album=str(data.get("album") or ""), started_at=datetime.fromisoformat(data["started_at"]),
            position_start_s=float(data["position_start_s"]), confidence=float(data["confidence"]),
            ended_at=datetime.fromisoformat(ended_at) if ended_at else None,
            position_end_s=None if position_end is None else float(position_end),
            speed_ratio=None if speed is None else float(speed),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["ended_at"] = self.ended_at.isoformat() if self.ended_at else None
        data["duration_s"] = None if self.duration_s is None else round(self.duration_s, 3)
        data["isrc"] = self.isrc or None
        for key in ("position_start_s", "position_end_s", "confidence"):
            if data[key] is not None:
                data[key] = round(data[key], 3)
        return data


@dataclass(frozen=True)
class PlayEvent:
    kind: EventKind
    play: Play
    event_id: str = field(default_factory=lambda: uuid4().hex)
    """Unique per event so consumers can drop a redelivered duplicate."""

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "event_id": self.event_id, "play": self.play.to_json()}


@dataclass(frozen=True)
class StationHealth:
    """A station's pipeline state, published periodically and on every change of ``source_up``,
    ``silent`` or ``catalog_up``."""

    source_up: bool
    """The source is delivering audio (not reconnecting, not stalled)."""
    silent: bool
    """Audio arrives but has been below the silence threshold for ``silence_after_s``."""
    dropped_windows: int
    """Windows not recognised since start: skipped because recognition fell behind capture, or
    lost while the catalog could not be searched."""
    windows_processed: int
    """Windows embedded and searched since start."""
    last_audio_at: datetime | None
    """UTC wall-clock time the last audio block arrived (``None``: never)."""
    reconnects: int
    """Times the source was (re)started after a failure since start."""
    catalog_up: bool = True
    """The last catalog search succeeded (``False`` while Milvus is unreachable: windows are lost)."""
