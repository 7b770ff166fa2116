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
  wins the confirmations; that emits exactly one end and one start.  While the current play still
  has evidence, another track must beat it by ``switch_margin``: a duplicate recording in the
  catalog (an album and a single version, a remaster) matches as well as the playing one, and
  without the margin noise alone would make the play flap between the two.
* **Re-identify** instead of changing when the winner is the play's *twin*: another track heard
  alongside it, about as well and at one offset from the play's alignment, from the play's start
  for ``TWIN_MIN_SHARED_S`` and still heard when it wins.  Both recordings hold the audio aired so
  far (a remaster containing the original, the same recording ingested twice), and the first one
  to confirm may be the wrong one.  Once the twin has won (beaten the play by ``switch_margin``,
  or matched where the play no longer does) for ``TWIN_LEAD_S``, and unless a third recording is
  as strong by then (the audio moved on), the audio has shown which recording is on air.  The
  play keeps its start and identity and changes its track (``PlayReidentified``): one play of the
  right recording instead of a false play and a split one.  A track mixed in later (a crossfade,
  a DJ blend) was not heard from the start, so it still ends the play and starts its own.
* **Shared audio the catalog knows of** (``SharedSpan``, from ``catalog overlaps``): while the play
  is inside a stretch of its recording that another catalog track also holds, evidence of that
  track where the two copies line up (the offset the catalog found) is the play's own evidence,
  and winning there renames the play as a twin does.  At another offset inside its copy (shared
  audio that repeats itself matches either copy at several offsets, most of all under noise) it
  keeps the play alive and cannot challenge it for up to ``end_after_s`` after the play's own
  evidence, so a noisy passage neither splits the play nor flaps it between the two names; a
  longer gap is another airing, and the other track challenges as any track does.  Ends are
  back-dated to the play's own evidence, never to the bridge.
* **Same track, other position**: a new play (a new airing) only after a break in the evidence.
  Music repeats itself (loops, choruses, ambient pieces that match at many offsets), so a
  same-track alignment whose evidence follows the play's without a break, or that was heard
  alongside it earlier (remembered as an alias), corrects the play's position instead.
* **End** when the current play has had no supporting window for ``end_after_s`` (silence, talk,
  other music); it is back-dated to the last supporting window.  Each end says why
  (``events.EndReason``).
* **Outages** (observations with ``source_up=False``) do not count as lost evidence: the play is
  held for up to ``continue_within_s`` of outage, and after the source is back the evidence clock
  restarts, so a short outage of the same recording at the position the clock predicts continues
  the play instead of splitting it.  A play whose evidence stops across an outage ends
  ``source_down``.
* ``started_s`` is back-dated to the earliest window that supported the new track, never before
  the track's position 0 nor before the previous play's end or the start of the stream.
* **Speed**: a station playing 3 % fast moves 0.03 s further into the track per second than its
  clock does, so the play's alignment drifts; once its evidence spans ``SPEED_MIN_SPAN_S`` the
  drift is fitted (``DriftFit``): the play's speed ratio is the slope plus one, its positions
  follow the fitted line, and the evidence is matched against where the line says the play is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from tunetrace.config import TrackerConfig
from tunetrace.events import EndReason

_MAX_ALIASES = 8
"""Repeat positions remembered per play (a looped track matches at a handful of them)."""
REALIGN_GAP_S = 1.0
"""A same-track alignment whose evidence starts less than this after the play's last evidence
continues the play at a corrected position: the audio never stopped matching the track. A station
airing the track again (a restart) leaves a longer break: a fade, a jingle, silence, talk."""
HEARD_ON_RETURN_S = 2.0
"""After an outage, a same-track alignment whose evidence starts within this of the source's return
was playing when the audio came back: the interrupted play continues at that alignment.  Music that
repeats itself matches at several alignments, and which repeat the clock predicts is ambiguous; a
station cannot have restarted a recording during an outage it was already playing it in."""


TWIN_MIN_SHARED_S = 15.0
"""Another track heard alongside a play for at least this long shares its audio: a crossfade or
a chance match at one alignment lasts seconds, a duplicated recording minutes."""
TWIN_FROM_START_S = 4.0
"""A twin must have been heard from within this of the play's start (the voting horizon): it is
then as good an answer for everything the play has aired."""
TWIN_LEAD_S = 3.0
"""A twin renames the play only after winning this long: time for a third recording to show (a
catalog mix entry holding A then C wins like A's twin the moment A ends, while C needs a few
seconds of evidence to be as strong)."""
_MAX_TWINS = 4
"""Other tracks remembered per play (a catalog rarely holds one recording more than twice)."""


SPEED_MIN_SPAN_S = 20.0
"""Evidence span from which a play's speed is estimated. Alignments come in steps of a quarter to
half a second, and 3 % over 20 s is 0.6 s of drift: shorter spans give ratios too coarse to say."""
SPEED_PLAUSIBLE = (0.9, 1.1)
"""Fitted ratios outside this range are not a speed (the voting tolerates a few percent only)."""


@dataclass(frozen=True)
class DriftFit:
    """Least squares of a play's alignment against stream time, kept as running sums (constant
    memory for a play of any length); times are relative to ``origin_s`` for precision."""

    origin_s: float
    n: int = 0
    sum_t: float = 0.0
    sum_a: float = 0.0
    sum_tt: float = 0.0
    sum_ta: float = 0.0
    first_t: float = float("inf")
    last_t: float = float("-inf")

    def add(self, stream_s: float, alignment_s: float) -> DriftFit:
        t = stream_s - self.origin_s
        return DriftFit(
            self.origin_s, self.n + 1, self.sum_t + t, self.sum_a + alignment_s, self.sum_tt + t * t,
            self.sum_ta + t * alignment_s, min(self.first_t, t), max(self.last_t, t),
        )

    def _slope(self) -> float | None:
        if self.n < 3 or self.last_t - self.first_t < SPEED_MIN_SPAN_S:
            return None
        spread = self.n * self.sum_tt - self.sum_t * self.sum_t
        if spread <= 0.0:
            return None
        slope = (self.n * self.sum_ta - self.sum_t * self.sum_a) / spread
        low, high = SPEED_PLAUSIBLE
        return slope if low <= 1.0 + slope <= high else None

    @property
    def speed_ratio(self) -> float | None:
        """The fitted playback speed (``None``: the evidence does not span enough time yet)."""
        slope = self._slope()
        return None if slope is None else 1.0 + slope

    def alignment_at(self, stream_s: float) -> float | None:
        """The fitted alignment at ``stream_s`` (``None`` while there is no speed estimate)."""
        slope = self._slope()
        if slope is None:
            return None
        mean_t, mean_a = self.sum_t / self.n, self.sum_a / self.n
        return mean_a + slope * (stream_s - self.origin_s - mean_t)


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
    source_up: bool = True
    """``False``: the source is down (no audio arrives); time passes on the air without evidence."""


@dataclass(frozen=True)
class TrackerParams:
    start_confidence: float
    keep_confidence: float
    min_aligned_windows: int
    start_confirmations: int
    end_after_s: float
    position_jump_s: float
    switch_margin: float
    continue_within_s: float = 0.0

    @classmethod
    def from_config(cls, config: TrackerConfig) -> TrackerParams:
        return cls(
            config.start_confidence, config.keep_confidence, config.min_aligned_windows,
            config.start_confirmations, config.end_after_s, config.position_jump_s,
            config.switch_margin, config.continue_within_s,
        )


@dataclass(frozen=True)
class Twin:
    """Another track heard in the decisions that supported a play, without a break longer than
    ``end_after_s`` from ``first_heard_s`` to ``last_heard_s`` (stream times).

    Shared audio sits at a fixed offset between two recordings, so a twin is kept as its alignment
    *relative to the play's* (``offset_s``): when the play's own alignment is corrected (a repeat
    resolved, see the aliases), the twin's follows."""

    track_id: int
    offset_s: float
    """The twin's alignment minus the play's, where it was first heard (following its drift)."""
    first_heard_s: float
    last_heard_s: float

    @property
    def heard_s(self) -> float:
        return self.last_heard_s - self.first_heard_s


@dataclass(frozen=True)
class SharedSpan:
    """A track's audio from ``start_s`` to ``end_s`` (positions in it) is also in ``other_id``,
    from ``other_start_s`` on: a remaster, an edit, the same recording ingested twice."""

    other_id: int
    start_s: float
    end_s: float
    other_start_s: float

    @property
    def other_end_s(self) -> float:
        return self.other_start_s + (self.end_s - self.start_s)


SharedCopy = Literal["lined_up", "elsewhere"]
"""Where another track's evidence sits in the copy of shared audio (``PlayTracker._shared_copy``)."""

SharedAudio = Mapping[int, tuple[SharedSpan, ...]]
"""Per track id, the stretches of it that other catalog tracks hold too (both directions listed)."""


@dataclass(frozen=True)
class OpenPlay:
    track_id: int
    alignment_s: float
    started_s: float
    confidence: float
    """The highest confidence seen for this play."""
    last_support_s: float
    speed_ratio: float
    aliases: tuple[float, ...] = ()
    """Other alignments of the same track heard alongside this one (repeats within the track)."""
    twins: tuple[Twin, ...] = ()
    """Other tracks heard alongside this one (shared audio, or only a crossfade: see ``Twin``)."""
    shared_until_s: float = float("-inf")
    """Where the latest evidence of the other copy of shared audio, at another offset, ends: it
    bridges a gap in the play's own evidence (``last_support_s``) of up to ``end_after_s``."""
    drift: DriftFit | None = field(default=None, compare=False)
    """The fit of this play's alignment over time (its speed), once evidence has been added."""

    def alignment_at(self, stream_s: float) -> float:
        """Where the play's alignment is at ``stream_s``: on the fitted line once its speed is
        known, else the alignment it started with."""
        fitted = self.drift.alignment_at(stream_s) if self.drift is not None else None
        return self.alignment_s if fitted is None else fitted

    def position_at(self, stream_s: float) -> float:
        return max(0.0, stream_s + self.alignment_at(stream_s))

    @property
    def measured_speed_ratio(self) -> float:
        """The fitted speed when known, else the one the evidence reported."""
        fitted = self.drift.speed_ratio if self.drift is not None else None
        return self.speed_ratio if fitted is None else fitted


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
    reason: EndReason

    @property
    def position_end_s(self) -> float:
        return self.play.position_at(self.ended_s)


@dataclass(frozen=True)
class PlayReidentified:
    """The open play is another track than the one it started as (its twin; see the module's rules):
    same start, new track and alignment."""

    play: OpenPlay
    previous_track_id: int
    offset_s: float
    """The new track's alignment minus the previous one's: a position in the previous track plus
    this is the same moment in the new one (the published start keeps its time across outages)."""


TrackerEvent = PlayStarted | PlayEnded | PlayReidentified


@dataclass(frozen=True)
class _Pending:
    evidence: Evidence
    confirmations: int


class PlayTracker:
    def __init__(
        self, params: TrackerParams, stream_start_s: float = 0.0, shared_audio: SharedAudio | None = None,
    ) -> None:
        self._params = params
        self._shared_audio: SharedAudio = shared_audio or {}
        self._current: OpenPlay | None = None
        self._pending: _Pending | None = None
        self._boundary_s = stream_start_s
        """No new play may start before this: the stream start or the previous play's end."""
        self._last_stream_s = stream_start_s
        self._down_since_s: float | None = None
        """Stream time the source went down (``None``: it is up)."""
        self._up_since_s = stream_start_s
        self._twin_lead_since_s: float | None = None
        """Stream time the play's twin began to win (``None``: it does not)."""
        """Stream time the source last came back: lost evidence is counted from here at the earliest."""

    @property
    def current(self) -> OpenPlay | None:
        return self._current

    def know_shared_audio(self, shared_audio: SharedAudio) -> None:
        """From now on, use this record of the catalog's shared audio (found after the start, and
        again after each catalog change)."""
        self._shared_audio = shared_audio

    def observe(self, observation: Observation) -> list[TrackerEvent]:
        """Feed one decision; returns the plays it ended and started, in that order."""
        now = max(observation.stream_s, self._last_stream_s)
        self._last_stream_s = now
        events: list[TrackerEvent] = []
        if observation.source_up and self._down_since_s is not None and self._current is not None:
            # Back after an outage nobody ticked through: too long, and the play ends source_down.
            play = self._current
            if (now - self._down_since_s >= self._params.continue_within_s
                    and now - play.last_support_s >= self._params.end_after_s):
                events.append(self._end(play.last_support_s, "source_down"))
        self._source_state(observation.source_up, now)
        support = self._refresh_support(observation.candidates, now) if self._current is not None else None
        challenger = self._challenger(observation.candidates, now, current_support=support)
        self._pending = self._confirm(observation.candidates, challenger)
        if self._pending is None:
            self._twin_lead_since_s = None
        if self._pending is not None and self._pending.confirmations >= self._params.start_confirmations:
            start = self._pending.evidence
            self._pending = None
            if self._current is not None and (self._twin_of(self._current, start) is not None
                                              or self._shared_copy(self._current, start, now) == "lined_up"):
                if self._twin_lead_since_s is None:
                    self._twin_lead_since_s = now
                if now - self._twin_lead_since_s < TWIN_LEAD_S:
                    return events  # the twin must keep winning before the play is renamed
                if not self._another_recording(observation.candidates, self._current, start):
                    events.append(self._reidentify(self._current, start))
                    return events
            if self._current is not None:
                ended_s = min(self._current.last_support_s, max(start.first_aligned_s, self._boundary_s))
                events.append(self._end(max(ended_s, self._current.started_s), "track_changed"))
            events.append(self._start(start))
        elif self._current is not None:
            reason = self._lost(self._current, now)
            if reason is not None:
                events.append(self._end(self._current.last_support_s, reason))
        return events

    def _source_state(self, up: bool, now: float) -> None:
        if not up and self._down_since_s is None:
            self._down_since_s = now
        elif up and self._down_since_s is not None:
            self._down_since_s = None
            self._up_since_s = now

    def _lost(self, play: OpenPlay, now: float) -> EndReason | None:
        """Whether the open play has lost its evidence, and why (``None``: it goes on).

        While the source is down the play is held up to ``continue_within_s`` of outage; once the
        source is back, ``end_after_s`` counts from its return, so the resumed audio can show that
        the same recording is still playing where the clock predicts.
        """
        heard_s = max(play.last_support_s, play.shared_until_s)
        quiet_s = now - heard_s
        if self._down_since_s is not None:
            outage_s = now - self._down_since_s
            held = outage_s < self._params.continue_within_s or quiet_s < self._params.end_after_s
            return None if held else "source_down"
        if now - max(heard_s, self._up_since_s) < self._params.end_after_s:
            return None
        return "source_down" if self._up_since_s > play.last_support_s else "evidence_lost"

    def close(self, stream_s: float) -> list[TrackerEvent]:
        """End the open play (at shutdown): it ends where its evidence ends, at most ``stream_s``."""
        self._pending = None
        if self._current is None:
            return []
        return [self._end(min(stream_s, self._current.last_support_s), "shutdown")]

    def _refresh_support(self, candidates: tuple[Evidence, ...], now: float) -> float | None:
        """Extend the current play's support from any candidate at its track and alignment; returns
        that candidate's confidence (``None``: the current play has no evidence in this decision).

        Other alignments of the track heard in the same decision become the play's aliases; the
        supporting alignment is added to the play's drift fit (its speed). Without such a candidate,
        the other copy of audio the catalog knows is shared may keep the play alive (``_bridge``);
        it is never returned as the play's support, so it can still challenge where it lines up.
        """
        current = self._current
        assert current is not None
        expected = current.alignment_at(now)
        same_track = [
            e for e in candidates
            if e.track_id == current.track_id and e.confidence >= self._params.keep_confidence
        ]
        for evidence in same_track:
            if self._near(evidence.alignment_s, expected):
                heard_alongside = tuple(
                    e.alignment_s for e in same_track if not self._near(e.alignment_s, expected)
                )
                aliases = current.aliases + tuple(a for a in heard_alongside if not self._is_alias(a))
                self._current = replace(
                    current,
                    last_support_s=max(current.last_support_s, evidence.last_aligned_s),
                    confidence=max(current.confidence, evidence.confidence),
                    aliases=aliases[-_MAX_ALIASES:],
                    twins=self._heard_alongside(current, candidates, evidence),
                    drift=_fit(current.drift, current.started_s, evidence),
                )
                return evidence.confidence
        self._bridge(current, candidates, now)
        return None

    def _bridge(self, play: OpenPlay, candidates: tuple[Evidence, ...], now: float) -> None:
        """Keep ``play`` alive on the other copy of shared audio when its own track is not heard.

        The copy where the two line up is the same audio at the same moment: it is the play's
        evidence (and may challenge it: ``_challenger``). At another offset (a repeat, most of
        all under noise) it only bridges a gap of up to ``end_after_s`` since the play's own
        evidence: longer, and the play's own recording is no longer what airs.
        """
        for evidence in candidates:
            if (evidence.confidence < self._params.keep_confidence
                    or evidence.aligned_windows < self._params.min_aligned_windows):
                continue
            copy = self._shared_copy(play, evidence, now)
            if copy == "lined_up":
                heard_s = max(play.last_support_s, evidence.last_aligned_s)
                self._current = replace(play, last_support_s=heard_s)
                return
            if copy == "elsewhere" and self._within_bridge(play, now):
                bridged_s = max(play.shared_until_s, evidence.last_aligned_s)
                self._current = replace(play, shared_until_s=bridged_s)
                return

    def _shared_copy(self, play: OpenPlay, evidence: Evidence, now: float) -> SharedCopy | None:
        """Whether ``evidence`` is of another track holding the audio the play is airing now, the
        catalog says (the play's position inside a shared stretch, the evidence's inside that
        stretch's copy, each within ``position_jump_s``), and if so, whether it is where the two
        copies line up (the same moment: as a twin is) or ``elsewhere`` in the copy (a repeat)."""
        if evidence.track_id == play.track_id:
            return None
        slack_s = self._params.position_jump_s
        position_s = play.position_at(now)
        evidence_position_s = now + evidence.alignment_s
        span = next((
            span for span in self._shared_audio.get(play.track_id, ())
            if span.other_id == evidence.track_id
            and span.start_s - slack_s <= position_s <= span.end_s + slack_s
            and span.other_start_s - slack_s <= evidence_position_s <= span.other_end_s + slack_s
        ), None)
        if span is None:
            return None
        offset_s = evidence.alignment_s - play.alignment_at(now)
        return "lined_up" if self._near(offset_s, span.other_start_s - span.start_s) else "elsewhere"

    def _within_bridge(self, play: OpenPlay, now: float) -> bool:
        """Whether the other copy elsewhere may still stand in for the play's own evidence."""
        return now - play.last_support_s <= self._params.end_after_s

    def _heard_alongside(
        self, play: OpenPlay, candidates: tuple[Evidence, ...], support: Evidence,
    ) -> tuple[Twin, ...]:
        """``play``'s twins updated with the other tracks this decision supports about as well as
        the play's ``support`` (less ``switch_margin``: as good an answer; a chance match on another
        track scores far lower).

        A twin keeps the offset it was first heard at: music that repeats itself matches at other
        alignments too, and a new airing of the twin right after the play (a back-to-back remaster)
        is heard at another offset while the play's evidence lingers, so neither may move it. A twin
        unheard for longer than ``end_after_s`` starts over at the best offset it is heard at next."""
        floor = max(self._params.keep_confidence, support.confidence - self._params.switch_margin)
        heard = [e for e in candidates if e.track_id != play.track_id and e.confidence >= floor
                 and e.aligned_windows >= self._params.min_aligned_windows]
        twins = {twin.track_id: twin for twin in play.twins}
        for track_id in dict.fromkeys(e.track_id for e in heard):  # best candidate first
            of_track = [e for e in heard if e.track_id == track_id]
            twin = twins.get(track_id)
            best = of_track[0]
            if twin is None or best.first_aligned_s - self._heard_until(twin) > self._params.end_after_s:
                twins[track_id] = Twin(track_id, best.alignment_s - support.alignment_s,
                                       best.first_aligned_s, best.last_aligned_s)
                continue
            same = next((e for e in of_track
                         if self._near(e.alignment_s, support.alignment_s + twin.offset_s)), None)
            if same is not None:
                twins[track_id] = replace(twin, offset_s=same.alignment_s - support.alignment_s,
                                          last_heard_s=max(twin.last_heard_s, same.last_aligned_s))
        return tuple(sorted(twins.values(), key=lambda twin: twin.last_heard_s)[-_MAX_TWINS:])

    def _heard_until(self, twin: Twin) -> float:
        """When the twin was last heard, an outage since then not counting as a gap (as for the
        play's own evidence, see ``_lost``)."""
        return max(twin.last_heard_s, self._up_since_s)

    def _twin_of(self, play: OpenPlay, evidence: Evidence) -> Twin | None:
        """The twin of ``play`` that ``evidence`` continues, if it shares the play's audio from its
        start (``None``: ``evidence`` is another recording taking over)."""
        expected_offset_s = evidence.alignment_s - play.alignment_at(play.last_support_s)
        for twin in play.twins:
            if (twin.track_id == evidence.track_id and self._near(twin.offset_s, expected_offset_s)
                    and twin.first_heard_s <= play.started_s + TWIN_FROM_START_S
                    and twin.heard_s >= TWIN_MIN_SHARED_S
                    and evidence.first_aligned_s - self._heard_until(twin) <= self._params.end_after_s):
                return twin
        return None

    def _another_recording(self, candidates: tuple[Evidence, ...], play: OpenPlay, twin: Evidence) -> bool:
        """Whether a third track, neither the play's nor its twin's, is strong enough to start a play:
        the audio has moved on to another recording (a catalog mix holding A then C matches like
        A's twin while A and then C air back to back), so the play ends instead of being renamed."""
        return any(e.track_id not in (play.track_id, twin.track_id) and self._strong(e) for e in candidates)

    def _reidentify(self, play: OpenPlay, evidence: Evidence) -> PlayReidentified:
        """``play`` goes on as ``evidence``'s track; the track it was becomes a twin (heard from the
        start until its last support), so the play can return to it the same way."""
        self._twin_lead_since_s = None
        was = Twin(play.track_id, play.alignment_at(play.last_support_s) - evidence.alignment_s,
                   play.started_s, play.last_support_s)
        twins = (*(twin for twin in play.twins if twin.track_id != evidence.track_id), was)
        self._current = replace(
            play,
            track_id=evidence.track_id,
            alignment_s=evidence.alignment_s,
            confidence=evidence.confidence,
            last_support_s=max(play.last_support_s, evidence.last_aligned_s),
            speed_ratio=evidence.speed_ratio,
            aliases=(),
            twins=twins[-_MAX_TWINS:],
            drift=_fit(None, play.started_s, evidence),
        )
        return PlayReidentified(self._current, play.track_id, -was.offset_s)

    def _near(self, a_s: float, b_s: float) -> bool:
        return abs(a_s - b_s) <= self._params.position_jump_s

    def _is_alias(self, alignment_s: float) -> bool:
        current = self._current
        return current is not None and any(self._near(alignment_s, a) for a in current.aliases)

    def _challenger(
        self, candidates: tuple[Evidence, ...], now: float, *, current_support: float | None,
    ) -> Evidence | None:
        """The best candidate if it is strong enough to start a play and is not the current play.

        The current track at another alignment only challenges once the current alignment has lost
        its support: music repeats, and a chorus matching an earlier chorus is not a jump.
        """
        if not candidates:
            return None
        best = candidates[0]
        if not self._strong(best):
            return None
        current = self._current
        if current is not None and best.track_id != current.track_id:
            # The other copy elsewhere in shared audio keeps the play alive instead (``_bridge``).
            margin = self._params.switch_margin
            outscored = current_support is not None and best.confidence < current_support + margin
            elsewhere = self._shared_copy(current, best, now) == "elsewhere"
            bridging = elsewhere and self._within_bridge(current, now)
            if outscored or bridging:
                return None
        elif current is not None:
            if current_support is not None or self._near(best.alignment_s, current.alignment_at(now)):
                return None
            unbroken = best.first_aligned_s - current.last_support_s < REALIGN_GAP_S
            on_return = (self._up_since_s > current.last_support_s
                         and best.first_aligned_s - self._up_since_s <= HEARD_ON_RETURN_S)
            if unbroken or on_return or self._is_alias(best.alignment_s):
                # An ambiguous repeat resolving, not a new airing: the play continues at the
                # better-supported position.
                self._current = replace(
                    current, alignment_s=best.alignment_s,
                    aliases=(*current.aliases, current.alignment_s)[-_MAX_ALIASES:],
                    drift=_fit(None, current.started_s, best),
                )
                return None
        return best

    def _confirm(self, candidates: tuple[Evidence, ...], challenger: Evidence | None) -> _Pending | None:
        """Count one more confirmation for the pending play if it is still a strong candidate.

        It need not stay first: two catalog entries of one recording trade first place by noise
        alone, and counting only the leader would keep either from ever being confirmed.
        """
        if challenger is None:
            return None
        pending = self._pending
        if pending is not None:
            for evidence in candidates:
                if self._agrees(pending.evidence, evidence) and self._strong(evidence):
                    return _Pending(evidence, pending.confirmations + 1)
        return _Pending(challenger, 1)

    def _strong(self, evidence: Evidence) -> bool:
        return (
            evidence.confidence >= self._params.start_confidence
            and evidence.aligned_windows >= self._params.min_aligned_windows
        )

    def _agrees(self, a: Evidence, b: Evidence) -> bool:
        return a.track_id == b.track_id and self._near(a.alignment_s, b.alignment_s)

    def _start(self, evidence: Evidence) -> PlayStarted:
        started_s = max(evidence.first_aligned_s, -evidence.alignment_s, self._boundary_s)
        play = OpenPlay(
            track_id=evidence.track_id,
            alignment_s=evidence.alignment_s,
            started_s=started_s,
            confidence=evidence.confidence,
            last_support_s=max(started_s, evidence.last_aligned_s),
            speed_ratio=evidence.speed_ratio,
            drift=_fit(None, started_s, evidence),
        )
        self._current = play
        self._twin_lead_since_s = None
        return PlayStarted(play)

    def _end(self, ended_s: float, reason: EndReason) -> PlayEnded:
        play = self._current
        assert play is not None
        self._current = None
        self._twin_lead_since_s = None
        ended_s = max(ended_s, play.started_s)
        self._boundary_s = ended_s
        return PlayEnded(replace(play, speed_ratio=play.measured_speed_ratio), ended_s, reason)


def _fit(drift: DriftFit | None, origin_s: float, evidence: Evidence) -> DriftFit:
    """``drift`` (a new fit from ``origin_s`` if ``None``) with this evidence's alignment, placed in
    the middle of the windows that support it (the alignment is their median)."""
    fit = drift if drift is not None else DriftFit(origin_s)
    return fit.add((evidence.first_aligned_s + evidence.last_aligned_s) / 2.0, evidence.alignment_s)
