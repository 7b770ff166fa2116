"""The running daemon's catalog: changes (ingest, remove, other processes' writes) reach the stations.

It also watches ``ingest.watch_folder``, when set, and ingests what appears there.

Stations vote with the catalog's *shape* (vectors per track, for the chance correction) and keep
track metadata they have read; a track not in the shape cannot be recognised, and a re-tagged
track must not keep its old title. ``LiveCatalog`` reads the complete tracks again after every
change made through the daemon and periodically (``service.catalog_refresh_s``, for writes by other
processes on a shared Milvus server), and hands each station the new shape and the ids of the
tracks that were added, removed or re-tagged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunetrace.catalog.control import Emit, Message
from tunetrace.config import IngestConfig
from tunetrace.encoders.base import Encoder
from tunetrace.errors import CatalogError
from tunetrace.store import CatalogShape, Track, catalog_shape

if TYPE_CHECKING:
    from tunetrace.catalog.ingest import FileOutcome
    from tunetrace.store.milvus import CatalogStore
    from tunetrace.store.resident import ResidentCatalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogChange:
    shape: CatalogShape
    changed: frozenset[int]
    """Tracks added, removed or re-tagged since the previous view."""


def diff_tracks(known: Mapping[int, Track], current: Sequence[Track]) -> CatalogChange | None:
    """What changed between two reads of the catalog's complete tracks (``None``: nothing)."""
    now = {t.track_id: t for t in current}
    changed = set(known.keys() ^ now.keys())
    changed.update(i for i in known.keys() & now.keys() if known[i] != now[i])
    if not changed:
        return None
    return CatalogChange(catalog_shape(current), frozenset(changed))


ApplyChange = Callable[[CatalogChange], None]


class LiveCatalog:
    """The daemon's writable catalog; every change is applied to the stations on the event loop."""

    def __init__(
        self, store: CatalogStore, encoder: Encoder, ingest_config: IngestConfig, batch_size: int,
        apply: ApplyChange, known: Sequence[Track], resident: ResidentCatalog | None = None,
    ) -> None:
        self._store = store
        self._resident = resident
        """The stations' in-memory copy of the vectors, brought up to date before they hear of a change."""
        self._encoder = encoder
        self._ingest_config = ingest_config
        self._batch_size = batch_size
        self._apply = apply
        self._known = {t.track_id: t for t in known}
        self._writing = asyncio.Lock()
        """One change at a time (the control socket and the watched folder both ingest)."""
        self._stopping = threading.Event()

    def stop(self) -> None:
        """The daemon is shutting down: an ingest in progress ends after its current file."""
        self._stopping.set()

    @property
    def tracks(self) -> list[Track]:
        """The complete tracks as of the last refresh."""
        return list(self._known.values())

    async def refresh(self) -> Message:
        """Read the complete tracks again; tell the stations what changed."""
        current = await asyncio.to_thread(self._store.tracks)
        change = diff_tracks(self._known, current)
        if change is not None and self._resident is not None:
            await asyncio.to_thread(self._resident.sync, current)
        self._known = {t.track_id: t for t in current}
        if change is not None:
            log.info("catalog changed: %d track(s) added, removed or re-tagged; %d track(s) now",
                     len(change.changed), len(current))
            self._apply(change)
        return {"tracks": len(current), "changed": len(change.changed) if change else 0}

    async def ingest(self, paths: list[Path], replace: bool, emit: Emit) -> Message:
        """Ingest ``paths`` with the daemon's encoder and catalog; each file's outcome is emitted
        as it finishes, and the new tracks are recognisable once this returns."""
        async with self._writing:
            return await self._ingest(paths, replace, emit)

    async def _ingest(self, paths: list[Path], replace: bool, emit: Emit) -> Message:
        from tunetrace.catalog.ingest import ingest

        loop = asyncio.get_running_loop()
        outcomes: asyncio.Queue[FileOutcome | None] = asyncio.Queue()

        def report(outcome: FileOutcome) -> None:
            loop.call_soon_threadsafe(outcomes.put_nowait, outcome)

        def work() -> None:
            try:
                ingest(
                    paths, self._encoder, self._store, self._ingest_config, replace=replace,
                    batch_size=self._batch_size, on_file=report, stop=self._stopping,
                )
            finally:
                loop.call_soon_threadsafe(outcomes.put_nowait, None)

        log.info("ingesting %d file(s)", len(paths))
        worker = asyncio.create_task(asyncio.to_thread(work), name="control-ingest")
        counts: dict[str, int] = {}
        while (outcome := await outcomes.get()) is not None:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            await emit(outcome_message(outcome))
        await worker
        if self._stopping.is_set():
            done = sum(counts.values())
            raise CatalogError(
                f"the daemon is shutting down: {done} of {len(paths)} file(s) were processed; run the "
                "same command again once it is back (files already ingested are skipped)"
            )
        refreshed = await self.refresh()
        return {"counts": counts, "tracks": refreshed["tracks"]}

    async def remove(self, track_id: int) -> Message:
        async with self._writing:
            removed = await asyncio.to_thread(self._store.remove_track, track_id)
            refreshed = await self.refresh()
        return {"removed": removed, "tracks": refreshed["tracks"]}

    async def watch(self, folder: Path, interval_s: float) -> None:
        """Ingest files that appear or change in ``folder`` once they are stable, until cancelled."""
        watcher = FolderWatch(folder, self._ingest_config.extensions)
        log.info("watching %s for new audio files every %g s", folder, interval_s)
        while True:
            ready = await asyncio.to_thread(watcher.poll)
            if ready:
                try:
                    await self.ingest(ready, False, _log_outcome)
                except CatalogError as exc:  # the catalog is down: the files are tried again later
                    log.warning("watched folder: cannot ingest now (will retry): %s", exc)
                    watcher.forget(ready)
            await asyncio.sleep(interval_s)


async def _log_outcome(message: Message) -> None:
    if message["status"] == "failed":
        log.warning("watched folder: %s", message["reason"])
    else:
        log.info("watched folder: %s %s", message["status"], message["path"])


@dataclass(frozen=True)
class _FileState:
    size: int
    mtime_ns: int


class FolderWatch:
    """Which audio files under a folder are new or changed *and* have stopped changing.

    A file is reported once its size and modification time are the same on two polls in a row,
    so a file still being copied in is left for a later poll; a file is reported again only when
    it changes (re-tagged: its track is updated). Polling needs no inotify and works on network
    mounts.
    """

    def __init__(self, folder: Path, extensions: Sequence[str]) -> None:
        self._folder = folder
        self._extensions = extensions
        self._done: dict[Path, _FileState] = {}
        self._settling: dict[Path, _FileState] = {}

    def forget(self, paths: Sequence[Path]) -> None:
        """Report these again at the next poll if still unchanged (their ingest could not be done)."""
        for path in paths:
            state = self._done.pop(path, None)
            if state is not None:
                self._settling[path] = state

    def poll(self) -> list[Path]:
        from tunetrace.catalog.scan import scan_paths

        if not self._folder.is_dir():
            log.warning("ingest.watch_folder %s is not a folder (yet); nothing to watch", self._folder)
            return []
        current: dict[Path, _FileState] = {}
        for path in scan_paths([self._folder], self._extensions):
            try:
                stat = path.stat()
            except OSError:
                continue
            current[path] = _FileState(stat.st_size, stat.st_mtime_ns)
        ready = []
        for path, state in current.items():
            if self._done.get(path) == state:
                continue
            if self._settling.get(path) == state:
                ready.append(path)
                self._done[path] = state
                del self._settling[path]
            else:
                self._settling[path] = state
        self._done = {p: s for p, s in self._done.items() if p in current}
        self._settling = {p: s for p, s in self._settling.items() if p in current}
        return ready


def outcome_message(outcome: FileOutcome) -> Message:
    """One file's outcome as the control socket carries it (and the CLI prints it)."""
    track = outcome.track
    return {
        "type": "file", "path": str(outcome.path), "status": outcome.status, "reason": outcome.reason,
        "track_id": track.track_id if track else None, "title": track.title if track else None,
        "audio_s": round(outcome.audio_s, 3), "n_vectors": track.n_vectors if track else 0,
    }
