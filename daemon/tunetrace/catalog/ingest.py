"""Ingestion: path -> (hash, metadata) -> decoded, embedded track -> rows in Milvus.

The run is a towhee pipeline (scan -> identify -> decide -> write) whose nodes hand hashing,
decoding and embedding to worker processes, one per core, while the nodes decide what each file
is (new, already in the catalog, re-tagged) and write finished tracks, so decode, embed and insert
overlap (docs/scaling.md section 4 has the measured figures). Each step
returns a value instead of raising, so one unreadable file becomes one line in the summary and the
run goes on. A track is written vectors first, its row last: an interrupted run leaves complete
tracks, which the next run skips by the hash of their audio.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
from tunetrace.errors import CatalogError, DecodeError, ModelError
from tunetrace.store import Track, track_id_for

if TYPE_CHECKING:
    from tunetrace.store.milvus import CatalogStore

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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
    """One file's track and its vectors, ready to be written (``path`` as the scan named it)."""

    track: Track
    embeddings: np.ndarray
    offsets_s: np.ndarray
    path: Path


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


@dataclass(frozen=True)
class Identified:
    """A readable audio file, the hash of its audio and its metadata: what decides between
    skipping it, re-tagging the track it already is, and decoding it."""

    path: Path
    digest: str
    meta: Metadata


@dataclass(frozen=True)
class EmbedSettings:
    """What a worker needs to turn one file into vectors (its part of the ``ingest`` section)."""

    batch_size: int
    min_duration_s: float
    silence_threshold_dbfs: float


EncoderFactory = Callable[[], Encoder]
"""Builds the catalog's encoder again inside a worker process. It must pickle (a module-level
function or a ``functools.partial`` of one): a loaded model does not."""


def identify_file(path: Path, sidecar: SidecarEntry | None) -> Identified | FileOutcome:
    """path -> the hash of its audio and its metadata, or the one-line reason it cannot be ingested."""
    try:
        refusal = _not_a_file(path)
        if refusal is not None:
            return refusal
        return Identified(path, content_hash(path), file_metadata(path, sidecar))
    except DecodeError as exc:
        return FileOutcome(path, "failed", str(exc))
    except OSError as exc:
        return FileOutcome(path, "failed", f"{path}: cannot read the file: {exc.strerror or exc}")


def embed_file(
    found: Identified, settings: EmbedSettings, encoder: Encoder | None = None,
) -> EmbeddedTrack | FileOutcome:
    """Decode, frame and embed one identified file (``encoder`` ``None``: this worker's own)."""
    try:
        return _embed(found, settings, encoder or _worker_encoder())
    except DecodeError as exc:
        return FileOutcome(found.path, "failed", str(exc))
    except OSError as exc:
        reason = f"{found.path}: cannot read the file: {exc.strerror or exc}"
        return FileOutcome(found.path, "failed", reason)


def _embed(found: Identified, settings: EmbedSettings, encoder: Encoder) -> EmbeddedTrack | FileOutcome:
    path, info = found.path, encoder.info
    spec = info.window_spec
    silence_rms = 10.0 ** (settings.silence_threshold_dbfs / 20.0)
    vectors: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    samples = 0

    def counted(blocks: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
        nonlocal samples
        for block in blocks:
            samples += block.size
            yield block

    for all_windows, all_starts in frame_stream(counted(iter_pcm_blocks(path, info.sample_rate)), spec):
        audible = _audible(all_windows, silence_rms)
        windows, starts = all_windows[audible], all_starts[audible]
        for start in range(0, windows.shape[0], settings.batch_size):
            vectors.append(encoder.embed(windows[start : start + settings.batch_size]))
        offsets.append(starts / info.sample_rate)
    if samples == 0:
        raise DecodeError(f"{path}: decoded to no audio")
    duration_s = samples / info.sample_rate
    unindexable = _unindexable(path, duration_s, settings, spec.window_s, audible=bool(vectors))
    if unindexable is not None:
        return FileOutcome(path, "failed", unindexable)
    meta = found.meta
    track = Track(
        track_id=track_id_for(found.digest),
        title=meta.title, artist=meta.artist, album=meta.album, isrc=meta.isrc,
        duration_s=duration_s,
        source_path=str(path.resolve()),
        content_hash=found.digest,
        n_vectors=int(sum(v.shape[0] for v in vectors)),
        ingested_at=time.time(),
    )
    return EmbeddedTrack(track, np.concatenate(vectors), np.concatenate(offsets), path)


def _unindexable(
    path: Path, duration_s: float, settings: EmbedSettings, window_s: float, *, audible: bool,
) -> str | None:
    """Why a decoded file is not indexed (too short, or silent throughout); ``None``: it is."""
    shortest_s = max(settings.min_duration_s, window_s)
    if duration_s < shortest_s:
        return (f"{path}: too short to index ({duration_s:.1f} s; a track needs at least "
                f"{shortest_s:.1f} s, ingest.min_duration_s)")
    if not audible:
        return f"{path}: silent (no window louder than ingest.silence_threshold_dbfs); nothing to index"
    return None


def _retagged(existing: Track, found: Identified) -> Track:
    """The catalog's track with this file's metadata (a file-stem title keeps the catalog's title)."""
    meta = found.meta
    return replace(
        existing, title=existing.title if meta.title_is_file_name else meta.title,
        artist=meta.artist, album=meta.album, isrc=meta.isrc, source_path=str(found.path.resolve()),
    )


def _audible(windows: np.ndarray, silence_rms: float) -> np.ndarray:
    """Indices of the windows louder than the silence threshold (RMS over the window)."""
    rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))
    return np.flatnonzero(rms >= silence_rms)


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


# -- worker processes ---------------------------------------------------------------------------

_worker: Encoder | ModelError | None = None
"""This worker process's encoder, built once by ``_start_worker``, or why it could not be built."""


def _start_worker(factory: EncoderFactory, encoder_id: str, parent_pid: int) -> None:
    """Build this worker's encoder. A failure is kept and raised by each job that needs the encoder:
    raised here it would end the worker and break the pool, and new workers would fail the same way.
    Ctrl-C is the ingesting process's to handle (it lets the files in progress finish)."""
    global _worker  # noqa: PLW0603 - one encoder per worker process, built before its first job
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent_pid)
    try:
        encoder = factory()
    except Exception as exc:  # missing weights, a broken model file: each file says so
        _worker = exc if isinstance(exc, ModelError) else ModelError(f"cannot build the encoder: {exc}")
        return
    if encoder.info.encoder_id != encoder_id:
        _worker = ModelError(
            f"an ingest worker built encoder {encoder.info.encoder_id}, not the catalog's {encoder_id}"
        )
        return
    _worker = encoder


def _die_with(parent_pid: int) -> None:
    """End this worker when the ingesting process dies, even by SIGKILL.

    A worker waits for jobs on a pipe whose writing end it inherited itself, so it would never see
    the end of it: killed ingests would leave their workers waiting forever, each holding a model.
    A daemon thread watches the parent instead. Not ``PR_SET_PDEATHSIG``: the kernel sends that when
    the *thread* that started the worker ends, and the pool starts workers from whichever pipeline
    thread submits; a worker killed so while it held the job queue's lock left its sibling waiting
    for that lock, and the run's shutdown waiting for the sibling, forever.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # reparented: the ingest is gone, nobody to work for

    threading.Thread(target=watch, name="tunetrace-parent-watch", daemon=True).start()


PARENT_POLL_S = 0.5
"""How often a worker checks that the ingesting process is still there."""


def _worker_encoder() -> Encoder:
    if _worker is None:
        raise RuntimeError("embed_file without an encoder outside an ingest worker")
    if isinstance(_worker, ModelError):
        raise _worker
    return _worker


class _InlineExecutor(Executor):
    """Runs each job when it is submitted, in the calling thread: one worker, no child process
    (the daemon's ingest, the tests' fake encoders, a machine with one core)."""

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        future: Future[_T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the caller through the future, as a pool does
            future.set_exception(exc)
        return future


def worker_count(configured: int) -> int:
    """``ingest.workers``: 0 means one per CPU this process may run on."""
    if configured > 0:
        return configured
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_pool(workers: int, encoder: Encoder, factory: EncoderFactory | None) -> Executor:
    """Where an ingest's heavy steps run: ``workers`` processes that each build the encoder with
    ``factory``, started as jobs arrive from any thread; or, with one worker or no factory, the
    calling thread itself."""
    if workers <= 1 or factory is None:
        return _InlineExecutor()
    # spawn, not fork: the caller may hold threads (gRPC, the daemon's loop) a fork would copy mid-step.
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker, initargs=(factory, encoder.info.encoder_id, os.getpid()),
    )


def _import_towhee() -> Any:
    """towhee imports ``pkg_resources``, which setuptools deprecates loudly; the pin keeps it working.
    Imported when a run starts, not with this module (it takes seconds)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import towhee

    return towhee


# -- the run: a towhee pipeline whose nodes hand the heavy steps to the workers ----------------

IN_FLIGHT_PER_WORKER = 8
"""Files between the pipeline's first and last node, per worker. The nodes keep the scan's order,
so a long track holds up the writing of the short ones after it; enough of them in flight keeps
every worker busy meanwhile (their results wait in memory: ~0.6 MB of vectors per 10 min track)."""

_STOPPED = "stopped"
"""What a node passes on for a file it did not start or finish because the run was stopped."""


MAX_POOL_RESTARTS = 5
"""New worker pools one run may start after workers died (the OOM killer, a crash in a decoder)."""
MAX_ATTEMPTS = 3
"""Pools a file's step may run in: a file in progress each time a pool broke is likely what
breaks it, and fails with its reason instead of taking the run's remaining restarts. (Files
queued behind it are charged too: a pool fails every step it holds, started or not.)"""
LOST_STEP_CHECK_S = 1.0
"""How often a node waiting for a step checks that the step's pool was not replaced meanwhile: a
step submitted just as its pool broke can be left unanswered (CPython fails the broken pool's
steps without the lock ``submit`` takes)."""


@dataclass(frozen=True)
class _Job:
    """A step of one file running in a worker: what ran, so that it can run again in a new pool."""

    path: Path
    future: Future[Any]
    step: Callable[..., Any]
    args: tuple[Any, ...]
    pool_generation: int
    attempt: int = 1


def _each(items: Iterable[Path | ScanProblem]) -> Iterable[Path | ScanProblem]:
    """The pipeline's source: the scan, one item at a time."""
    return items


@dataclass(frozen=True)
class _Copy:
    """A file whose audio an earlier file of this run is being embedded from. The pipeline keeps
    the scan's order, so the writer sees it after that one is written, and decides it then."""

    found: Identified


class _Run:
    """One ingest as a towhee pipeline of three nodes, each in its own thread:

    ``start`` (scan item -> its identification, in a worker) -> ``decide`` (skip, re-tag, or
    embed in a worker, by the hash of the audio against the catalog as it is now) -> ``finish``
    (write the embedded track, record the outcome). The heavy steps run in the worker processes,
    so while ``finish`` writes one file, workers decode and embed the next ones and hash those
    after: the nodes overlap, and at most ``in_flight`` files are between ``start`` and
    ``finish``. No node raises (a file's failure is its outcome), so one bad file never stops the
    pipeline.

    Every write happens in ``finish``, one track at a time (vectors first, the track row last), so
    a run killed at any moment leaves only complete tracks plus, at most, the vectors of one track
    without its row: unseen by recognition, and replaced when that file is ingested again.
    """

    def __init__(
        self, pool: Executor, store: CatalogStore, *, new_pool: Callable[[], Executor],
        inline_encoder: Encoder | None,
        settings: EmbedSettings, insert_batch: int, sidecar: dict[Path, SidecarEntry], replace: bool,
        record: Callable[[FileOutcome], None], stop: threading.Event | None, in_flight: int,
    ) -> None:
        self._pool, self._store, self._inline_encoder = pool, store, inline_encoder
        self._new_pool, self._pool_generation, self._pool_lock = new_pool, 0, threading.Lock()
        self._restarts_left = MAX_POOL_RESTARTS
        self._closing = False
        self._settings, self._insert_batch = settings, insert_batch
        self._sidecar, self._replace = sidecar, replace
        self._record, self._stop = record, stop
        self.interrupted = threading.Event()
        """Set when the caller gives up (Ctrl-C) or a node failed: the nodes pass the remaining
        files on unstarted, so the pipeline drains and ends instead of waiting for ever."""
        self.error: Exception | None = None
        """What failed in a node itself (not a file's failure): raised once the pipeline has ended."""
        self._slots = threading.BoundedSemaphore(in_flight)
        self._embedding: set[str] = set()
        """Audio being embedded in this run (a later copy of it is decided once it is written)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Run:
        """towhee deep-copies the pipeline as it is built, nodes' callables included; a run is the
        one live state its nodes share, never copied."""
        return self

    def _stopped(self) -> bool:
        return self.interrupted.is_set() or (self._stop is not None and self._stop.is_set())

    def pipeline(self) -> Any:
        """The towhee pipeline ``scan items -> outcomes`` (calling it runs the ingest)."""
        pipe = _import_towhee().pipe
        return (
            pipe.input("items")
            .flat_map("items", "item", _each)
            .map("item", "identifying", self.start)
            .map("identifying", "embedding", self.decide)
            .map("embedding", "outcome", self.finish)
            .output("outcome")
        )

    def start(self, item: Path | ScanProblem) -> _Job | FileOutcome | str:
        self._slots.acquire()  # released by ``finish``, which every item reaches
        if isinstance(item, ScanProblem):
            return FileOutcome(item.path, "failed", item.reason)
        if self._stopped():
            return _STOPPED
        return self._submit(item, identify_file, item, self._sidecar_entry(item))

    def decide(self, pending: _Job | FileOutcome | str) -> _Job | FileOutcome | _Copy | str:
        """Skip, re-tag, or embed: by the hash of the audio against the catalog as it is now."""
        try:
            return self._decide(self._result(pending))
        except Exception as exc:  # a fault of the run, not of one file: stop it, say why
            self._fail(exc)
            return _STOPPED

    def _decide(self, found: Identified | FileOutcome | str) -> _Job | FileOutcome | _Copy | str:
        if isinstance(found, FileOutcome | str):
            return found
        if self._stopped():
            return _STOPPED
        if found.digest in self._embedding:
            return _Copy(found)
        try:
            settled = self._settled(found, replace=self._replace)
        except CatalogError as exc:
            return FileOutcome(found.path, "failed", f"{found.path}: the catalog did not answer: {exc}")
        if settled is not None:
            return settled
        self._embedding.add(found.digest)
        return self._submit(found.path, embed_file, found, self._settings, self._inline_encoder)

    def finish(self, pending: _Job | FileOutcome | _Copy | str) -> FileOutcome | str:
        """Write and report the file; after Ctrl-C or a failed node nothing more is written or
        reported (a daemon's ``stop`` still lets the files in progress finish)."""
        try:
            if self.interrupted.is_set():
                return _STOPPED
            outcome = self._finish(self._result(pending))
            if isinstance(outcome, FileOutcome):
                self._record(outcome)
            return outcome
        except Exception as exc:  # the progress hook or the writer itself failed: stop the run
            self._fail(exc)
            return _STOPPED
        finally:
            self._slots.release()

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self.interrupted.set()

    def _finish(self, result: EmbeddedTrack | FileOutcome | _Copy | str) -> FileOutcome | str:
        if isinstance(result, EmbeddedTrack):
            return self._write(result)
        if isinstance(result, _Copy):
            return self._copy(result.found)
        return result

    def _settled(self, found: Identified, *, replace: bool) -> FileOutcome | None:
        """The outcome of a file whose audio the catalog already holds (``None``: embed it)."""
        existing = self._store.find_by_hash(found.digest)
        if existing is None or replace:
            return None
        retagged = _retagged(existing, found)
        if existing.same_metadata(retagged):
            return FileOutcome(found.path, "skipped", "already in the catalog", existing)
        self._store.update_track(retagged)
        return FileOutcome(found.path, "updated", "new tags for a track in the catalog", retagged)

    def _copy(self, found: Identified) -> FileOutcome:
        """A later copy of audio this run embedded: now that one is written, decided like any file
        already in the catalog; if it could not be stored, neither can this copy."""
        try:
            settled = self._settled(found, replace=False)
        except CatalogError as exc:
            return FileOutcome(found.path, "failed", f"{found.path}: the catalog did not answer: {exc}")
        if settled is not None:
            return settled
        return FileOutcome(found.path, "failed", f"{found.path}: the same audio as a file of this run "
                           "that could not be ingested (see above); run the same command again")

    def _sidecar_entry(self, path: Path) -> SidecarEntry | None:
        if not self._sidecar:
            return None
        try:
            return self._sidecar.get(path.resolve())
        except (OSError, RuntimeError):  # a link loop: identify_file reports it
            return None

    def close(self) -> None:
        """Shut the current pool down, waiting for the steps in progress; no new pool after this."""
        with self._pool_lock:
            self._closing = True
            pool = self._pool
        pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, path: Path, step: Callable[..., Any], *args: Any) -> _Job | FileOutcome:
        with self._pool_lock:
            pool, generation = self._pool, self._pool_generation
        try:
            return _Job(path, pool.submit(step, *args), step, args, generation)
        except BrokenProcessPool as exc:  # broken since a step said so: this one has not run yet
            return self._again(_Job(path, Future(), step, args, generation, attempt=0), exc)

    def _result(self, pending: Any) -> Any:
        """What a node received, with a worker's step waited for (its failure is the file's outcome).

        A worker that died (killed, or crashed in native code) breaks its whole pool, failing every
        step in it: those steps run again in a new pool, so one death costs the files in progress a
        retry, not the rest of the run.
        """
        while isinstance(pending, _Job):
            try:
                return pending.future.result(timeout=LOST_STEP_CHECK_S)
            except TimeoutError:
                if pending.pool_generation != self._pool_generation:  # its pool broke: it is lost
                    pending = self._again(pending, BrokenProcessPool("its worker pool broke"))
            except BrokenProcessPool as exc:
                pending = self._again(pending, exc)
            except (Exception, KeyboardInterrupt, SystemExit) as exc:  # a step raised: that file fails
                # (A worker's own KeyboardInterrupt or SystemExit comes back as its step's result; let
                # through, it ended this node, and the run then hung waiting for that node.)
                return FileOutcome(pending.path, "failed", _worker_failure(pending.path, exc))
        return pending

    def _again(self, job: _Job, exc: BrokenProcessPool) -> _Job | FileOutcome:
        """``job`` submitted again to a working pool (started here if ``job``'s is still the current
        one), or its failure once it, or the run, has used up its retries, or the run is ending."""
        failed = FileOutcome(job.path, "failed", _worker_failure(job.path, exc))
        with self._pool_lock:
            if self._closing or self.interrupted.is_set() or job.attempt >= MAX_ATTEMPTS:
                return failed  # a pool still broken is replaced by the next step that needs one
            if job.pool_generation == self._pool_generation and not self._replace_pool(exc):
                return failed
            pool, generation = self._pool, self._pool_generation
        try:
            return replace(job, future=pool.submit(job.step, *job.args), pool_generation=generation,
                           attempt=job.attempt + 1)
        except BrokenProcessPool as again:  # that pool broke too, already: count it as an attempt
            return self._again(replace(job, pool_generation=generation, attempt=job.attempt + 1), again)

    def _replace_pool(self, exc: BrokenProcessPool) -> bool:
        """A new pool for the broken current one, if the run has restarts left. Called with
        ``_pool_lock`` held."""
        if not self._restarts_left:
            return False
        try:
            fresh = self._new_pool()
        except OSError as error:  # no processes or pipes left to start workers with
            log.error("could not start new ingest workers (%s); the files left fail: run the same "
                      "command again", describe_os_error(error))
            self._restarts_left = 0
            return False
        self._pool.shutdown(wait=False, cancel_futures=True)  # its workers are gone or being ended
        self._pool, self._pool_generation = fresh, self._pool_generation + 1
        self._restarts_left -= 1
        if self._restarts_left:
            log.warning("an ingest worker died (%s); starting new workers, and the files in progress "
                        "run again (%d more restarts in this run)", exc, self._restarts_left)
        else:
            log.error("an ingest worker died (%s); starting new workers for the last time in this "
                      "run: if they die too, the files left fail (run the same command again)", exc)
        return True

    def _write(self, item: EmbeddedTrack) -> FileOutcome:
        """Store the track; only then is its audio no longer "being embedded" (``decide``, in its
        own thread, must find it in one place or the other, never in neither)."""
        path = item.path
        try:
            existed = self._store.find_by_hash(item.track.content_hash) is not None
            self._store.add_track(item.track, item.embeddings, item.offsets_s, self._insert_batch)
        except CatalogError as exc:
            return FileOutcome(path, "failed", f"{path}: could not store vectors: {exc}")
        finally:
            self._embedding.discard(item.track.content_hash)
        return FileOutcome(path, "replaced" if existed else "added", "", item.track, item.track.duration_s)


def _worker_failure(path: Path, exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{path}: the ingest worker failed ({first}); see the log, then run the same command again"


ProgressHook = Callable[[FileOutcome], None]


def _with_problems(paths: Iterator[Path], problems: list[ScanProblem]) -> Iterator[Path | ScanProblem]:
    """The scan's files, with what it could not look at in the place it met it."""
    for path in paths:
        while problems:
            yield problems.pop(0)
        yield path
    yield from problems


def ingest(
    paths: Iterable[Path], encoder: Encoder, store: CatalogStore, config: IngestConfig, *,
    replace: bool = False, batch_size: int = 64, on_file: ProgressHook | None = None,
    stop: threading.Event | None = None, encoder_factory: EncoderFactory | None = None,
) -> IngestSummary:
    """Ingest every audio file under ``paths``; failures are collected, never fatal.

    With ``encoder_factory`` and more than one ``ingest.workers``, files are hashed, decoded and
    embedded in that many worker processes (each builds its own encoder) while this thread writes
    finished tracks: decoding and embedding are CPU-bound Python and NumPy, so threads would share
    one core. Without it everything runs here, one file after another. Outcomes are reported as
    files finish, so with workers their order is not the scan's.

    ``stop`` (set by a daemon shutting down) ends the run once the files in progress are done.
    """
    started = time.monotonic()
    sidecar = load_sidecar(config.metadata_csv) if config.metadata_csv else {}
    workers = worker_count(config.workers) if encoder_factory is not None else 1
    summary = IngestSummary()
    problems: list[ScanProblem] = []

    def record(outcome: FileOutcome) -> None:
        if outcome.status == "failed":
            log.warning("%s", outcome.reason)
        summary.outcomes.append(outcome)
        if on_file is not None:
            on_file(outcome)

    found = scan_paths(paths, config.extensions, problems, follow_symlinks_out=config.follow_symlinks_out)
    def new_pool() -> Executor:
        return worker_pool(workers, encoder, encoder_factory)

    pool = new_pool()
    run = _Run(
        pool, store, new_pool=new_pool,
        inline_encoder=encoder if isinstance(pool, _InlineExecutor) else None,
        settings=EmbedSettings(batch_size, config.min_duration_s, config.silence_threshold_dbfs),
        insert_batch=config.insert_batch, sidecar=sidecar, replace=replace, record=record, stop=stop,
        in_flight=1 if isinstance(pool, _InlineExecutor) else IN_FLIGHT_PER_WORKER * workers,
    )
    try:
        run.pipeline()(_with_problems(found, problems)).get()
    except BaseException:
        run.interrupted.set()  # Ctrl-C: the nodes pass what is left on unstarted, and end
        raise
    finally:
        run.close()
    if run.error is not None:
        raise run.error
    summary.wall_s = time.monotonic() - started
    return summary
