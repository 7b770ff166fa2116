"""The daemon's record of the catalog's shared audio, kept current and cached in ``data_dir``.

``catalog.overlaps`` finds recordings the catalog holds twice by searching a sample of a track's
windows against the whole catalog; the tracker (``tracker.SharedSpan``) then keeps a play through
the shared stretch whichever copy the votes favour. That search costs one catalog search per
track, so it runs in the background after the start, and its result is cached: a restart, or a
catalog change, only searches the tracks added since. The cache is derived data:
a missing, unreadable or foreign one (another encoder's catalog) is rebuilt, never trusted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunetrace.catalog.overlaps import Overlap, OverlapCatalog, OverlapParams, find_overlaps
from tunetrace.tracker import SharedAudio, SharedSpan

log = logging.getLogger(__name__)

CACHE_NAME = "shared-audio.json"
Publish = Callable[[SharedAudio], None]
SAVE_EVERY_TRACKS = 500
"""The cache is written after each this many searched tracks: a large catalog's first search
takes a while (one search per track), and a restart meanwhile keeps what was done."""
_CACHE_VERSION = 2


class _StopRequestedError(Exception):
    """Raised between two searched tracks once ``SharedAudioRecord.stop`` was called."""


@dataclass(frozen=True)
class SharedStretch:
    """One stretch of audio two tracks share (``track`` from ``track_start_s`` to ``track_end_s``
    is ``other`` from ``other_start_s``): what the cache keeps of an ``Overlap``."""

    track_id: int
    other_id: int
    track_start_s: float
    track_end_s: float
    other_start_s: float

    @classmethod
    def of(cls, overlap: Overlap) -> SharedStretch:
        return cls(overlap.track.track_id, overlap.other.track_id, overlap.track_start_s,
                   overlap.track_end_s, overlap.other_start_s)

    @property
    def length_s(self) -> float:
        return self.track_end_s - self.track_start_s

    def spans(self) -> tuple[tuple[int, SharedSpan], tuple[int, SharedSpan]]:
        """The stretch seen from each of the two tracks."""
        length_s = self.length_s
        return (
            (self.track_id,
             SharedSpan(self.other_id, self.track_start_s, self.track_end_s, self.other_start_s)),
            (self.other_id,
             SharedSpan(self.track_id, self.other_start_s, self.other_start_s + length_s,
                        self.track_start_s)),
        )


def shared_audio(stretches: Sequence[SharedStretch]) -> SharedAudio:
    """The tracker's view: per track, every stretch it shares, seen from both tracks. A pair found
    from both sides (both were searched) is one stretch: the longer finding is kept."""
    longest: dict[frozenset[int], SharedStretch] = {}
    for stretch in stretches:
        pair = frozenset((stretch.track_id, stretch.other_id))
        if pair not in longest or stretch.length_s > longest[pair].length_s:
            longest[pair] = stretch
    by_track: dict[int, list[SharedSpan]] = {}
    for stretch in longest.values():
        for track_id, span in stretch.spans():
            by_track.setdefault(track_id, []).append(span)
    return {track_id: tuple(spans) for track_id, spans in by_track.items()}


class SharedAudioRecord:
    """The shared stretches of one catalog, brought up to date by ``update`` (blocking: run it in
    a thread) and cached at ``path``."""

    def __init__(self, path: Path, encoder_id: str, params: OverlapParams) -> None:
        self._path = path
        self._encoder_id = encoder_id
        self._params = params
        self._probed: set[int] = set()
        """Every track whose windows were searched. A track id is derived from the audio's content
        hash (``store.track_id_for``), so an id still in the catalog is still the same audio."""
        self._stretches: list[SharedStretch] = []
        self._stopping = threading.Event()
        self._load()

    def stop(self) -> None:
        """Ask a running ``update`` (in another thread) to return after the track it is searching."""
        self._stopping.set()

    def update(self, catalog: OverlapCatalog, publish: Publish | None = None) -> SharedAudio:
        """Forget removed tracks, search the tracks not searched yet, save; returns the tracker's
        view, also handed to ``publish`` after each saved chunk (a large catalog's first search is
        long, and what is found is useful at once). A catalog error propagates (the caller
        retries); a cache that cannot be written is logged and the record kept in memory;
        ``stop`` returns early with what was found."""
        current = {track.track_id for track in catalog.tracks()}
        kept = [s for s in self._stretches if s.track_id in current and s.other_id in current]
        changed = len(kept) != len(self._stretches) or not self._probed <= current
        self._probed &= current
        self._stretches = kept
        new = [track_id for track_id in current if track_id not in self._probed]
        if changed and not new:
            self._save()
        view = shared_audio(self._stretches)
        for done in range(0, len(new), SAVE_EVERY_TRACKS):
            chunk = new[done : done + SAVE_EVERY_TRACKS]
            try:
                found = find_overlaps(catalog, self._params, self._check_stop, track_ids=chunk)
            except _StopRequestedError:
                break
            self._stretches += [SharedStretch.of(overlap) for overlap in found]
            self._probed.update(chunk)
            self._save()
            log.info("shared audio: searched %d of %d new track(s); %d stretch(es) shared between catalog "
                     "tracks", done + len(chunk), len(new), len(self._stretches))
            view = shared_audio(self._stretches)
            if publish is not None:
                publish(view)
        return view

    def _check_stop(self, done: int, total: int) -> None:
        if self._stopping.is_set():
            raise _StopRequestedError

    def _load(self) -> None:
        try:
            cached = json.loads(self._path.read_text(encoding="utf-8"))
            if (cached.get("version") != _CACHE_VERSION or cached.get("encoder_id") != self._encoder_id
                    or cached.get("params") != asdict(self._params)):
                return
            probed = {int(track_id) for track_id in cached["probed"]}
            stretches = [SharedStretch(**fields) for fields in cached["stretches"]]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("shared audio: ignoring the unreadable cache %s (%s); searching the catalog again",
                        self._path, exc)
            return
        self._probed, self._stretches = probed, stretches

    def _save(self) -> None:
        content: dict[str, Any] = {
            "version": _CACHE_VERSION,
            "encoder_id": self._encoder_id,
            "params": asdict(self._params),
            "probed": sorted(str(track_id) for track_id in self._probed),
            "stretches": [asdict(stretch) for stretch in self._stretches],
        }
        temporary = self._path.with_name(self._path.name + ".tmp")
        try:
            temporary.write_text(json.dumps(content), encoding="utf-8")
            temporary.replace(self._path)
        except OSError as exc:  # a full disk: the record still works, a restart searches again
            log.warning("shared audio: cannot write %s (%s); kept in memory only", self._path, exc.strerror)
