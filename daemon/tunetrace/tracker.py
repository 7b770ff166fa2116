"""The play tracker: a pure state machine from per-window voting results to plays.

Time is data: every call carries the stream time it describes (seconds on the station's stream
clock), and the tracker never reads a clock, so tests drive it through any schedule exactly.

Rules, each there to prevent a specific failure:

* **Start** only after ``start_confirmations`` consecutive decisions agree on the same track at
  the same alignment (within ``position_jump_s``) with confidence >= ``start_confidence`` and at
  least ``min_aligned_windows`` time-consistent windows: chance matches on unknown music do not
  keep one alignment, so they never confirm (no false plays).
* **Keep** while the current track at its alignment keeps ``keep_confidence`` (lower than the start
  threshold: hysteresis, so a quiet passage does not end and restart the play: no flapping).
* **Change** only when another track (or the same track at another alignment: a position jump)
  wins the confirmations; that emits exactly one end and one start.  Music repeats itself, so a
  same-track alignment that was heard *alongside* the current one (a loop or chorus matching at
  two positions) corrects the play's position instead of starting a new play.
* **End** when the current play has had no supporting window for ``end_after_s`` (silence, talk,
  other music); it is back-dated to the last supporting window.
* ``started_s`` is back-dated to the earliest window that supported the new track, never before
  the track's position 0 nor before the previous play's end or the start of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunetrace.config import TrackerConfig

REALIGN_OVERLAP_S = 2.0
"""A same-track alignment whose support overlaps the current one's by this much is a correction
of an ambiguous (repeated) position, not a jump: a real jump starts where the old position ends."""


@dataclass(frozen=True)
class Evidence:
    """One candidate of one decision: a track at an alignment and how well the horizon supports it."""

    track_id: int
    alignment_s: float
    """Track position at stream time 0 (position at stream time ``t`` is ``t + alignment_s``)."""
    confidence: float
    aligned_windows: int
    first_aligned_s: float
    """Stream time where the earliest supporting window in the horizon starts."""
    last_aligned_s: float
    """Stream time where the latest supporting window in the horizon ends."""
    speed_ratio: float = 1.0


@dataclass(frozen=True)
class Observation:
    """What the voting saw over the horizon ending at ``stream_s`` (best candidate first)."""

    stream_s: float
    candidates: tuple[Evidence, ...] = ()


@dataclass(frozen=True)
class TrackerParams:
    start_confidence: float
    keep_confidence: float
    min_aligned_windows: int
    start_confirmations: int
    end_after_s: float
    position_jump_s: float

    @classmethod
    def from_config(cls, config: TrackerConfig) -> TrackerParams:
        return cls(
            config.start_confidence, config.keep_confidence, config.min_aligned_windows,
            config.start_confirmations, config.end_after_s, config.position_jump_s,
        )


@dataclass(frozen=True)
class OpenPlay:
    track_id: int
    alignment_s: float
    started_s: float
    confidence: float
    """The highest confidence seen for this play."""
    last_support_s: float
    speed_ratio: float

    def position_at(self, stream_s: float) -> float:
        return max(0.0, stream_s + self.alignment_s)


@dataclass(frozen=True)
class PlayStarted:
    play: OpenPlay

    @property
    def position_start_s(self) -> float:
        return self.play.position_at(self.play.started_s)


@dataclass(frozen=True)
class PlayEnded:
    play: OpenPlay
    ended_s: float

    @property
    def position_end_s(self) -> float:
        return self.play.position_at(self.ended_s)


TrackerEvent = PlayStarted | PlayEnded


@dataclass(frozen=True)
class _Pending:
    evidence: Evidence
    confirmations: int


class PlayTracker:
    def __init__(self, params: TrackerParams, stream_start_s: float = 0.0) -> None:
        self._params = params
        self._current: OpenPlay | None = None
        self._pending: _Pending | None = None
        self._boundary_s = stream_start_s
        """No new play may start before this: the stream start or the previous play's end."""
        self._last_stream_s = stream_start_s

    @property
    def current(self) -> OpenPlay | None:
        return self._current

    def observe(self, observation: Observation) -> list[TrackerEvent]:
        """Feed one decision; returns the plays it ended and started, in that order."""
        now = max(observation.stream_s, self._last_stream_s)
        self._last_stream_s = now
        events: list[TrackerEvent] = []
        supported = self._current is not None and self._refresh_support(observation.candidates)
        challenger = self._challenger(observation.candidates, current_supported=supported)
        if challenger is None:
            self._pending = None
        elif self._pending is not None and self._agrees(self._pending.evidence, challenger):
            self._pending = _Pending(challenger, self._pending.confirmations + 1)
        else:
            self._pending = _Pending(challenger, 1)
        if self._pending is not None and self._pending.confirmations >= self._params.start_confirmations:
            start = self._pending.evidence
            self._pending = None
            if self._current is not None:
                ended_s = min(self._current.last_support_s, max(start.first_aligned_s, self._boundary_s))
                events.append(self._end(max(ended_s, self._current.started_s)))
            events.append(self._start(start))
        elif self._current is not None and now - self._current.last_support_s >= self._params.end_after_s:
            events.append(self._end(self._current.last_support_s))
        return events

    def close(self, stream_s: float) -> list[TrackerEvent]:
        """End the open play (at shutdown): it ends where its evidence ends, at most ``stream_s``."""
        self._pending = None
        if self._current is None:
            return []
        return [self._end(min(stream_s, self._current.last_support_s))]

    def _refresh_support(self, candidates: tuple[Evidence, ...]) -> bool:
        """Extend the current play's support from any candidate at its track and alignment."""
        current = self._current
        assert current is not None
        for evidence in candidates:
            if (
                evidence.track_id == current.track_id
                and abs(evidence.alignment_s - current.alignment_s) <= self._params.position_jump_s
                and evidence.confidence >= self._params.keep_confidence
            ):
                self._current = replace(
                    current,
                    last_support_s=max(current.last_support_s, evidence.last_aligned_s),
                    confidence=max(current.confidence, evidence.confidence),
                )
                return True
        return False

    def _challenger(self, candidates: tuple[Evidence, ...], *, current_supported: bool) -> Evidence | None:
        """The best candidate if it is strong enough to start a play and is not the current play.

        The current track at another alignment only challenges once the current alignment has lost
        its support: music repeats, and a chorus matching an earlier chorus is not a jump.
        """
        if not candidates:
            return None
        best = candidates[0]
        if best.confidence < self._params.start_confidence:
            return None
        if best.aligned_windows < self._params.min_aligned_windows:
            return None
        current = self._current
        if current is not None and best.track_id == current.track_id:
            near = abs(best.alignment_s - current.alignment_s) <= self._params.position_jump_s
            if current_supported or near:
                return None
            if current.last_support_s - best.first_aligned_s >= REALIGN_OVERLAP_S:
                # The new position was heard alongside the old one: an ambiguous repeat resolving,
                # not a jump. The play continues at the better-supported position.
                self._current = replace(current, alignment_s=best.alignment_s)
                return None
        return best

    def _agrees(self, a: Evidence, b: Evidence) -> bool:
        return a.track_id == b.track_id and abs(a.alignment_s - b.alignment_s) <= self._params.position_jump_s

    def _start(self, evidence: Evidence) -> PlayStarted:
        started_s = max(evidence.first_aligned_s, -evidence.alignment_s, self._boundary_s)
        play = OpenPlay(
            track_id=evidence.track_id,
            alignment_s=evidence.alignment_s,
            started_s=started_s,
            confidence=evidence.confidence,
            last_support_s=max(started_s, evidence.last_aligned_s),
            speed_ratio=evidence.speed_ratio,
        )
        self._current = play
        return PlayStarted(play)

    def _end(self, ended_s: float) -> PlayEnded:
        play = self._current
        assert play is not None
        self._current = None
        ended_s = max(ended_s, play.started_s)
        self._boundary_s = ended_s
        return PlayEnded(play, ended_s)
