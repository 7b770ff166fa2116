"""Ingestion as a towhee pipeline: path -> decoded, embedded track -> rows in Milvus.

Operators are registered locally (towhee's hub is not reachable).  Each operator returns a value
instead of raising, so one unreadable file becomes one line in the summary and the run goes on.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunetrace.audio.decode import describe_os_error, iter_pcm_blocks, probe_tags
from tunetrace.audio.windows import frame_stream
from tunetrace.catalog.scan import (
    ScanProblem,
    SidecarEntry,
    content_hash,
    load_sidecar,
    normalise_isrc,
    scan_paths,
)
from tunetrace.catalog.tags import read_tags
from tunetrace.config import IngestConfig
from tunetrace.encoders.base import Encoder
from tunetrace.errors import CatalogError, DecodeError
from tunetrace.store import Track, track_id_for

if TYPE_CHECKING:
    from tunetrace.store.milvus import CatalogStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metadata:
    title: str
    artist: str
    album: str
    isrc: str
    title_is_file_name: bool = False
    """No tag or CSV row gave a title: it is the file's stem, which does not re-title a track
    already in the catalog (a renamed copy is the same recording with the same title)."""


def file_metadata(path: Path, sidecar: SidecarEntry | None) -> Metadata:
    """The metadata CSV first, then the tags (mutagen, then ffprobe), then the file stem as title.

    Raises ``DecodeError`` when ffprobe finds no audio stream (the file is not audio).
    """
    probed = probe_tags(path)
    tagged = read_tags(path)

    def pick(csv_value: str | None, tag_value: str, probed_value: str) -> str:
        return csv_value or tag_value or probed_value

    title = pick(sidecar.title if sidecar else None, tagged.title if tagged else "", probed.title)
    return Metadata(
        title=title, title_is_file_name=title == path.stem and not (sidecar and sidecar.title),
        artist=pick(sidecar.artist if sidecar else None, tagged.artist if tagged else "", probed.artist),
        album=pick(sidecar.album if sidecar else None, tagged.album if tagged else "", probed.album),
        isrc=pick(
            sidecar.isrc if sidecar else None,
            normalise_isrc(tagged.isrc) if tagged else "", normalise_isrc(probed.isrc),
        ),
    )


@dataclass(frozen=True)
class EmbeddedTrack:
    track: Track
    embeddings: np.ndarray
    offsets_s: np.ndarray


@dataclass(frozen=True)
class FileOutcome:
    path: Path
    status: str
    """``added``, ``replaced``, ``updated`` (same audio, new tags: metadata rewritten, same track
    id), ``skipped`` (already in the catalog as it is) or ``failed``."""
    reason: str = ""
    track: Track | None = None
    audio_s: float = 0.0


@dataclass
class IngestSummary:
    outcomes: list[FileOutcome] = field(default_factory=list)
    wall_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def added(self) -> int:
        return self.count("added") + self.count("replaced")

    @property
    def audio_s(self) -> float:
        return sum(o.audio_s for o in self.outcomes if o.status in ("added", "replaced"))

    @property
    def vectors(self) -> int:
        return sum(
            o.track.n_vectors for o in self.outcomes if o.track and o.status in ("added", "replaced")
        )

    @property
    def failures(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class _Shared:
    """Hands live objects (encoder, store) to towhee operators, which deep-copy their arguments."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


def _import_towhee() -> Any:
    """towhee imports ``pkg_resources``, which setuptools deprecates loudly; the pin keeps it working."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import towhee

    return towhee


def _register_operators() -> None:
    register = _import_towhee().register

    @register(name="tunetrace/embed_file")
    class EmbedFile:
        """path -> EmbeddedTrack | FileOutcome (skipped or failed)."""

        def __init__(
            self, encoder: _Shared, store: _Shared, sidecar: dict[Path, SidecarEntry],
            replace: bool, batch_size: int, min_duration_s: float, silence_threshold_dbfs: float,
        ) -> None:
            self._encoder: Encoder = encoder.value
            self._store: CatalogStore = store.value
            self._sidecar = sidecar
            self._replace, self._batch_size = replace, batch_size
            self._min_duration_s = min_duration_s
            self._silence_rms = 10.0 ** (silence_threshold_dbfs / 20.0)

        def __call__(self, path: Path) -> EmbeddedTrack | FileOutcome:
            try:
                return self._embed(path)
            except DecodeError as exc:
                return FileOutcome(path, "failed", str(exc))
            except OSError as exc:
                return FileOutcome(path, "failed", f"{path}: cannot read the file: {exc.strerror or exc}")

        def _embed(self, path: Path) -> EmbeddedTrack | FileOutcome:
            refusal = _not_a_file(path)
            if refusal is not None:
                return refusal
            digest = content_hash(path)
            existing = self._store.find_by_hash(digest)
            meta = file_metadata(path, self._sidecar.get(path.resolve()))
            if existing is not None and not self._replace:
                retagged = replace(
                    existing, title=existing.title if meta.title_is_file_name else meta.title,
                    artist=meta.artist, album=meta.album, isrc=meta.isrc, source_path=str(path.resolve()),
                )
                if existing.same_metadata(retagged):
                    return FileOutcome(path, "skipped", "already in the catalog", existing)
                self._store.update_track(retagged)
                return FileOutcome(path, "updated", "new tags for a track in the catalog", retagged)
            info = self._encoder.info
            spec = info.window_spec
            vectors: list[np.ndarray] = []
            offsets: list[np.ndarray] = []
            samples = 0

            def counted(blocks: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
                nonlocal samples
                for block in blocks:
                    samples += block.size
                    yield block

            blocks = counted(iter_pcm_blocks(path, info.sample_rate))
            for all_windows, all_starts in frame_stream(blocks, spec):
                audible = _audible(all_windows, self._silence_rms)
                windows, starts = all_windows[audible], all_starts[audible]
                for start in range(0, windows.shape[0], self._batch_size):
                    vectors.append(self._encoder.embed(windows[start : start + self._batch_size]))
                offsets.append(starts / info.sample_rate)
            duration_s = samples / info.sample_rate
            if samples == 0:
                raise DecodeError(f"{path}: decoded to no audio")
            unindexable = self._unindexable(path, duration_s, spec.window_s, audible=bool(vectors))
            if unindexable is not None:
                return FileOutcome(path, "failed", unindexable)
            track = Track(
                track_id=track_id_for(digest),
                title=meta.title, artist=meta.artist, album=meta.album, isrc=meta.isrc,
                duration_s=duration_s,
                source_path=str(path.resolve()),
                content_hash=digest,
                n_vectors=int(sum(v.shape[0] for v in vectors)),
                ingested_at=time.time(),
            )
            return EmbeddedTrack(track, np.concatenate(vectors), np.concatenate(offsets))

        def _unindexable(
            self, path: Path, duration_s: float, window_s: float, *, audible: bool,
        ) -> str | None:
            """Why a decoded file is not indexed (too short, or silent throughout); ``None``: it is."""
            shortest_s = max(self._min_duration_s, window_s)
            if duration_s < shortest_s:
                return (f"{path}: too short to index ({duration_s:.1f} s; a track needs at least "
                        f"{shortest_s:.1f} s, ingest.min_duration_s)")
            if not audible:
                return (f"{path}: silent (no window louder than ingest.silence_threshold_dbfs); "
                        "nothing to index")
            return None

    @register(name="tunetrace/insert_track")
    class InsertTrack:
        """EmbeddedTrack -> FileOutcome, after writing it to the store."""

        def __init__(self, store: _Shared, insert_batch: int) -> None:
            self._store: CatalogStore = store.value
            self._insert_batch = insert_batch

        def __call__(self, path: Path, item: EmbeddedTrack | FileOutcome) -> FileOutcome:
            if isinstance(item, FileOutcome):
                return item
            existed = self._store.find_by_hash(item.track.content_hash) is not None
            try:
                self._store.add_track(item.track, item.embeddings, item.offsets_s, self._insert_batch)
            except CatalogError as exc:
                return FileOutcome(path, "failed", f"{path}: could not store vectors: {exc}")
            return FileOutcome(
                path, "replaced" if existed else "added", "", item.track, item.track.duration_s
            )


def _audible(windows: np.ndarray, silence_rms: float) -> np.ndarray:
    """Indices of the windows louder than the silence threshold (RMS over the window)."""
    rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))
    return np.flatnonzero(rms >= silence_rms)


_registered = False


def _not_a_file(path: Path) -> FileOutcome | None:
    """A failed outcome for a path that is not a readable regular file; ``None`` when it is one."""
    try:
        is_file = path.is_file()
    except OSError as exc:  # a name too long for the file system, a link loop
        return FileOutcome(path, "failed", f"{path}: {describe_os_error(exc)}")
    if is_file:
        return None
    broken_link = path.is_symlink() and not path.exists()
    what = "a broken symbolic link" if broken_link else "no such file"
    return FileOutcome(path, "failed", f"{path}: {what}")


def build_pipeline(
    encoder: Encoder, store: CatalogStore, config: IngestConfig, *, replace: bool, batch_size: int
) -> Any:
    """The towhee pipeline ``path -> FileOutcome``."""
    global _registered  # noqa: PLW0603 - towhee's registry is process-global too
    towhee = _import_towhee()
    ops, pipe = towhee.ops, towhee.pipe
    if not _registered:
        _register_operators()
        _registered = True
    sidecar = load_sidecar(config.metadata_csv) if config.metadata_csv else {}
    return (
        pipe.input("path")
        .map("path", "embedded", ops.tunetrace.embed_file(
            encoder=_Shared(encoder), store=_Shared(store), sidecar=sidecar,
            replace=replace, batch_size=batch_size, min_duration_s=config.min_duration_s,
            silence_threshold_dbfs=config.silence_threshold_dbfs,
        ))
        .map(("path", "embedded"), "outcome", ops.tunetrace.insert_track(
            store=_Shared(store), insert_batch=config.insert_batch,
        ))
        .output("outcome")
    )


ProgressHook = Callable[[FileOutcome], None]


def ingest(
    paths: Iterable[Path], encoder: Encoder, store: CatalogStore, config: IngestConfig, *,
    replace: bool = False, batch_size: int = 64, on_file: ProgressHook | None = None,
    stop: threading.Event | None = None,
) -> IngestSummary:
    """Ingest every audio file under ``paths``; failures are collected, never fatal.

    ``stop`` (set by a daemon shutting down) ends the run after the file in progress.
    """
    started = time.monotonic()
    pipeline = build_pipeline(encoder, store, config, replace=replace, batch_size=batch_size)
    summary = IngestSummary()
    problems: list[ScanProblem] = []

    def record(outcome: FileOutcome) -> None:
        if outcome.status == "failed":
            log.warning("%s", outcome.reason)
        summary.outcomes.append(outcome)
        if on_file is not None:
            on_file(outcome)

    found = scan_paths(paths, config.extensions, problems, follow_symlinks_out=config.follow_symlinks_out)
    for path in found:
        if stop is not None and stop.is_set():
            break
        while problems:  # reported where the scan met them, in order
            problem = problems.pop(0)
            record(FileOutcome(problem.path, "failed", problem.reason))
        try:
            outcome: FileOutcome = pipeline(path).get()[0]
        except RuntimeError as exc:  # towhee wraps anything an operator did not handle
            outcome = FileOutcome(path, "failed", f"{path}: {str(exc).splitlines()[0]}")
        record(outcome)
    for problem in problems:
        record(FileOutcome(problem.path, "failed", problem.reason))
    summary.wall_s = time.monotonic() - started
    return summary
