"""``tunetrace ingest | identify | catalog | check-config``: the catalog's commands."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tunetrace.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    Subparsers,
    add_config_option,
    load,
)
from tunetrace.config import Config, data_dir_problem, load_config
from tunetrace.durations import minutes_seconds
from tunetrace.errors import ConfigError, DecodeError
from tunetrace.redact import redact_url

if TYPE_CHECKING:
    from tunetrace.store.milvus import CatalogStore

# -- ingest -----------------------------------------------------------------------------------


def _cmd_ingest(args: argparse.Namespace) -> int:
    from tunetrace.catalog.ingest import FileOutcome
    from tunetrace.catalog.live import outcome_message
    from tunetrace.catalog.scan import ScanProblem, scan_paths

    config = load(args)
    missing: list[Path] = []
    files: list[Path] = []
    scan_problems: list[ScanProblem] = []
    for path in args.paths:
        problem = _path_problem(path)
        if problem is not None:
            missing.append(path)
            print(f"error: {path}: {problem}", file=sys.stderr)
            continue
        problems: list[ScanProblem] = []
        found = list(scan_paths(
            [path], config.ingest.extensions, problems, follow_symlinks_out=config.ingest.follow_symlinks_out,
        ))
        if path.is_dir() and not found:  # otherwise a mistyped folder would pass silently
            missing.append(path)
            for unreadable in problems:
                print(f"error: {unreadable.reason}", file=sys.stderr)
            if not problems:
                print(f"error: {path}: a folder with no audio files in it", file=sys.stderr)
        else:
            scan_problems.extend(problems)
        files.extend(found)
    if not files:
        print(
            "nothing to ingest: no audio files found (looked for "
            f"{', '.join(config.ingest.extensions)}) in {', '.join(map(str, args.paths))}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    started = time.monotonic()
    progress = _Progress(files, quiet=args.quiet, every_s=args.progress_every)
    daemon = _daemon_socket(config)
    if daemon is not None:
        print(f"the daemon owns this catalog: handing {len(files)} file(s) to it ({daemon})",
              file=sys.stderr)
        outcomes = _ingest_via_daemon(daemon, files, replace=args.replace, progress=progress)
    else:
        outcomes = _ingest_here(config, files, replace=args.replace, progress=progress)
        _notify_daemon(config)
    # What the scan could not look at (an unreadable subfolder, a link out of the tree) failed too.
    outcomes.extend(outcome_message(FileOutcome(p.path, "failed", p.reason)) for p in scan_problems)
    failed = _print_ingest_summary(outcomes, time.monotonic() - started)
    return EXIT_PARTIAL if failed or missing else EXIT_OK


Outcome = dict[str, Any]
"""One file's outcome as ``catalog.live.outcome_message`` writes it (locally or from the daemon)."""


class _Progress:
    """The progress line of one ``tunetrace ingest`` on stderr: redrawn in place on a terminal, a
    plain line every ``every_s`` seconds otherwise (systemd, cron, a pipe), nothing with ``-q``."""

    def __init__(self, files: list[Path], *, quiet: bool, every_s: float) -> None:
        from tunetrace.catalog.progress import IngestProgress, ProgressPrinter

        self._sizes: dict[str, int] = {}
        """Bytes of each file, by the name the ingest reports: as named here or (the daemon) resolved."""
        for path in files:
            self._sizes[str(path)] = self._sizes[_resolved(path)] = _size(path)
        total_bytes = sum(_size(path) for path in files)
        progress = IngestProgress(len(files), total_bytes, time.monotonic())
        self._printer = None if quiet else ProgressPrinter(
            progress, sys.stderr, time.monotonic, live=sys.stderr.isatty(), every_s=every_s,
        )

    def done(self, message: Outcome) -> None:
        if self._printer is not None:
            path = str(message["path"])
            size = self._sizes.get(path, 0)
            self._printer.done(str(message["status"]), float(message["audio_s"]), size)

    def close(self) -> None:
        if self._printer is not None:
            self._printer.close()


def _resolved(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # a link loop: reported by the ingest itself
        return str(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _ingest_here(
    config: Config, files: list[Path], *, replace: bool, progress: _Progress,
) -> list[Outcome]:
    """Open the catalog in this process (refused, saying what to do, while another holds it)."""
    from functools import partial

    from tunetrace.catalog.ingest import FileOutcome, ingest
    from tunetrace.catalog.live import outcome_message
    from tunetrace.encoders import create_encoder
    from tunetrace.store import open_catalog

    encoder = create_encoder(config.encoder, config.data_dir)
    outcomes: list[Outcome] = []
    with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=True) as store:

        def done(outcome: FileOutcome) -> None:
            message = outcome_message(outcome)
            outcomes.append(message)
            progress.done(message)

        try:
            ingest(files, encoder, store, config.ingest, replace=replace,
                   batch_size=config.encoder.batch_size, on_file=done,
                   encoder_factory=partial(create_encoder, config.encoder, config.data_dir))
        finally:
            progress.close()
    return outcomes


def _ingest_via_daemon(
    socket: Path, files: list[Path], *, replace: bool, progress: _Progress,
) -> list[Outcome]:
    """The daemon ingests with its own encoder and catalog; outcomes stream back per file."""
    from tunetrace.catalog.control import request

    outcomes: list[Outcome] = []

    def done(message: Outcome) -> None:
        outcomes.append(message)
        progress.done(message)

    try:
        request(socket, {"op": "ingest", "paths": [str(p.resolve()) for p in files], "replace": replace},
                done)
    finally:
        progress.close()
    return outcomes


def _print_ingest_summary(outcomes: list[Outcome], wall_s: float) -> int:
    """Print the one-line summary and each failure; return how many files failed."""
    count = Counter(o["status"] for o in outcomes)
    stored = [o for o in outcomes if o["status"] in ("added", "replaced")]
    audio_s = sum(float(o["audio_s"]) for o in stored)
    vectors = sum(int(o["n_vectors"]) for o in stored)
    speed = audio_s / wall_s if wall_s > 0 else 0.0
    updated = f", updated {count['updated']} (new tags)" if count["updated"] else ""
    print(
        f"added {count['added'] + count['replaced']}{updated}, skipped {count['skipped']} (already in "
        f"the catalog), failed {count['failed']}; {audio_s / 3600:.2f} h of audio, {vectors} vectors, "
        f"{wall_s:.1f} s wall ({speed:.0f} s of audio per second)",
    )
    for failure in (o for o in outcomes if o["status"] == "failed"):
        print(f"  failed: {_shown(str(failure['reason']))}")
    return count["failed"]


def _daemon_socket(config: Config) -> Path | None:
    """The control socket of a running daemon that owns this embedded catalog, if any.

    A Milvus server has no owner: every process writes it directly.
    """
    from tunetrace.catalog.control import listening
    from tunetrace.config import is_server_uri
    from tunetrace.store.lock import read_holder

    if is_server_uri(config.milvus_uri()):
        return None
    holder = read_holder(Path(config.milvus_uri()).expanduser().resolve())
    if holder is None or not holder.control_socket:
        return None
    path = Path(holder.control_socket)
    return path if listening(path) else None


def _notify_daemon(config: Config) -> None:
    """After writing a shared catalog directly: the local daemon, if any, re-reads it now (others
    pick the change up within ``service.catalog_refresh_s``)."""
    from tunetrace.catalog.control import listening, request, socket_path
    from tunetrace.errors import CatalogError

    path = socket_path(config.data_dir)
    if not listening(path):
        return
    try:
        request(path, {"op": "refresh"}, timeout_s=60)
    except CatalogError as exc:
        print(f"warning: the local daemon did not refresh its catalog now ({exc}); it will within "
              "service.catalog_refresh_s", file=sys.stderr)


def _path_problem(path: Path) -> str | None:
    """Why a path named on the command line cannot be ingested at all (``None``: it can be tried)."""
    from tunetrace.audio.decode import describe_os_error

    try:
        path.stat()
    except OSError as exc:  # a name too long, a link loop: one path, not the whole run
        if exc.errno != errno.ENOENT:
            return describe_os_error(exc)
        return "a broken symbolic link" if path.is_symlink() else "no such file or folder"
    return None


# -- identify ---------------------------------------------------------------------------------


_RESULT_KEYS = (
    "file", "match", "track_id", "title", "artist", "album", "isrc", "offset_s", "confidence",
    "speed_ratio", "speed_measured", "aligned_windows", "verified", "latency_s", "note", "query_s", "error",
)
"""Every ``identify --json`` line has all of these, result or error, so consumers need no special case."""

_NOTES = {
    "silent": "the audio is silent",
    "too_short": "the audio is shorter than one window",
}


def _identification_record(
    path: Path, result: Any, elapsed_s: float, query_s: float, truncated: bool,
) -> dict[str, Any]:
    track = result.track
    note = _NOTES.get(result.note) if result.note else None
    if truncated:
        note = f"only the first {query_s:.0f} s were identified (matcher.max_query_s)"
    return {
        "file": str(path),
        "match": result.matched,
        "track_id": track.track_id if track else None,
        "title": track.title if track else None,
        "artist": track.artist if track else None,
        "album": track.album if track else None,
        "isrc": (track.isrc or None) if track else None,
        "offset_s": round(result.offset_s, 3) if track else None,
        "confidence": round(result.confidence, 4),
        "speed_ratio": round(result.speed_ratio, 4) if track else None,
        "speed_measured": result.speed_measured if track else None,
        "aligned_windows": result.aligned_windows,
        "verified": result.verified,
        "latency_s": round(elapsed_s, 4),
        "note": note,
        "query_s": round(query_s, 3),
        "error": None,
    }


def _error_record(path: Path, error: str) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(_RESULT_KEYS)
    record.update(file=str(path), match=False, error=error)
    return record


def _shown(text: str) -> str:
    """A name as one line of text output: a newline in a file name must not forge a line."""
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


def _print_identification(record: dict[str, Any], out: TextIO) -> None:
    name = _shown(record["file"])
    if record["error"] is not None:
        print(f"{name}: error: {_shown(record['error'])}", file=out)
    elif record["match"]:
        artist = f" by {record['artist']}" if record["artist"] else ""
        note = f" [{record['note']}]" if record["note"] else ""
        print(
            f"{name}: {_shown(record['title'] + artist)} at {record['offset_s']:.1f} s "
            f"(confidence {record['confidence']:.2f}){note}",
            file=out,
        )
    elif record["note"] and record["note"] in _NOTES.values():
        print(f"{name}: no match: {record['note']}", file=out)
    else:
        note = f" [{record['note']}]" if record["note"] else ""
        print(f"{name}: no match (best confidence {record['confidence']:.2f}){note}", file=out)


def _read_query(path: Path, rate: int, limit_s: float) -> tuple[Any, bool]:
    """The first ``limit_s`` seconds of the file, and whether it was longer."""
    from tunetrace.audio.decode import decode_file

    # A second past the limit tells a file that was cut from one exactly that long.
    audio = decode_file(path, rate, max_seconds=limit_s + 1.0)
    limit = round(limit_s * rate)
    return audio[:limit], audio.size > limit


def _cmd_identify(args: argparse.Namespace) -> int:
    from tunetrace.audio.decode import describe_os_error
    from tunetrace.encoders import create_encoder
    from tunetrace.identify import Recognizer
    from tunetrace.store import open_catalog

    config = load(args)
    encoder = create_encoder(config.encoder, config.data_dir)
    rate = encoder.info.sample_rate
    limit_s = config.matcher.max_query_s
    failed = 0

    def emit(record: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            _print_identification(record, sys.stdout)

    with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
        recognizer = Recognizer(encoder, store, config.matcher, batch_size=config.encoder.batch_size)
        files: list[Path] = list(args.files)
        for first in range(0, len(files), args.batch_files):
            # One group is answered by one search request; its records keep the files' order.
            records: list[dict[str, Any]] = []
            pending: list[tuple[int, Path, float, Any, bool]] = []  # slot, path, started, audio, cut
            for path in files[first : first + args.batch_files]:
                started = time.perf_counter()
                try:
                    audio, truncated = _read_query(path, rate, limit_s)
                except DecodeError as exc:
                    records.append(_error_record(path, str(exc)))
                    continue
                except OSError as exc:  # a path the checks could not foresee: one file, not the batch
                    records.append(_error_record(path, f"{path}: {describe_os_error(exc)}"))
                    continue
                pending.append((len(records), path, started, audio, truncated))
                records.append({})
            failed += len(records) - len(pending)
            results = recognizer.identify_many([audio for *_, audio, _ in pending])
            answered = time.perf_counter()
            for (slot, path, started, audio, truncated), result in zip(pending, results, strict=True):
                records[slot] = _identification_record(
                    path, result, answered - started, audio.size / rate, truncated,
                )
            for record in records:
                emit(record)
    return EXIT_PARTIAL if failed else EXIT_OK


# -- catalog ----------------------------------------------------------------------------------


def _remove_via_daemon(socket: Path, track_id: int) -> int:
    from tunetrace.catalog.control import request

    reply = request(socket, {"op": "remove", "track_id": track_id}, timeout_s=120)
    if not reply.get("removed"):
        print(f"error: no track with id {track_id} in the catalog (see `tunetrace catalog list`)",
              file=sys.stderr)
        return EXIT_PARTIAL
    print(f"removed track {track_id} (the running daemon no longer recognises it)")
    return EXIT_OK


def _print_list(store: CatalogStore, as_json: bool) -> int:
    tracks = store.tracks()
    if as_json:
        for t in tracks:
            print(json.dumps({
                "track_id": t.track_id, "title": t.title, "artist": t.artist,
                "album": t.album, "duration_s": round(t.duration_s, 2),
                "source_path": t.source_path, "n_vectors": t.n_vectors, "isrc": t.isrc or None,
            }))
    else:
        for t in tracks:
            who = f" — {t.artist}" if t.artist else ""
            print(f"{t.track_id:>20}  {t.duration_s/60:5.1f} min  {t.title}{who}")
    return EXIT_OK


def _print_stats(store: CatalogStore, config: Config, as_json: bool) -> int:
    tracks = store.tracks()
    info = store.info
    vector_rows = store.vector_count()
    stats = {
        "uri": redact_url(config.milvus_uri()),
        "encoder": info.encoder_id, "dimension": info.dimension, "metric": info.metric,
        "window_s": info.window_s, "hop_s": info.hop_s,
        "tracks": len(tracks), "hours": round(sum(t.duration_s for t in tracks) / 3600, 3),
        "vectors": sum(t.n_vectors for t in tracks), "vector_rows": vector_rows,
        "index": store.index.type, "index_build": store.index.build, "shards": store.index.shards,
    }
    outgrown = store.size_warning(vector_rows)
    if as_json:
        print(json.dumps({**stats, "warning": outgrown}))
    else:
        for key, value in stats.items():
            print(f"{key:>12}: {value}")
    if outgrown:
        print(f"warning: {outgrown}", file=sys.stderr)
    return EXIT_OK


def _cmd_catalog(args: argparse.Namespace) -> int:
    from tunetrace.encoders import create_encoder
    from tunetrace.store import open_catalog

    config = load(args)
    if args.catalog_command == "remove":
        daemon = _daemon_socket(config)
        if daemon is not None:
            return _remove_via_daemon(daemon, args.track_id)
    encoder = create_encoder(config.encoder, config.data_dir)
    with open_catalog(config.milvus, config.milvus_uri(), encoder.info, create=False) as store:
        if args.catalog_command == "list":
            return _print_list(store, args.json)
        if args.catalog_command == "stats":
            return _print_stats(store, config, args.json)
        if args.catalog_command == "overlaps":
            return _print_overlaps(store, encoder.info.hop_s, args)
        removed = store.remove_track(args.track_id)
    if not removed:
        print(f"error: no track with id {args.track_id} in the catalog (see `tunetrace catalog list`)",
              file=sys.stderr)
        return EXIT_PARTIAL
    print(f"removed track {args.track_id}")
    _notify_daemon(config)
    return EXIT_OK


def _print_overlaps(store: CatalogStore, catalog_hop_s: float, args: argparse.Namespace) -> int:
    """Pairs of tracks that share audio (``catalog.overlaps``), the larger share first."""
    from tunetrace.catalog.overlaps import OverlapParams, find_overlaps, pairs

    params = OverlapParams(catalog_hop_s, min_shared_s=args.min_shared_s)
    last_line_s = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last_line_s
        now_s = time.monotonic()
        if not args.quiet and (now_s - last_line_s >= args.progress_every or done == total):
            print(f"overlaps: searched {done} of {total} tracks", file=sys.stderr, flush=True)
            last_line_s = now_s

    found = pairs(find_overlaps(store, params, progress))
    if args.json:
        for o in found:
            print(json.dumps({
                "track_id": o.track.track_id, "title": o.track.title, "other_track_id": o.other.track_id,
                "other_title": o.other.title, "track_start_s": round(o.track_start_s, 1),
                "track_end_s": round(o.track_end_s, 1), "other_start_s": round(o.other_start_s, 1),
                "shared_s": round(o.shared_s, 1), "share_of_track": round(o.share_of_track, 3),
                "probes_found": o.probes_found, "probes_in_span": o.probes_in_span,
            }))
        return EXIT_OK
    for o in found:
        print(f"{o.track.title or o.track.track_id} ({_minutes(o.track.duration_s)}) shares "
              f"{_minutes(o.shared_s)} ({o.share_of_track:.0%} of it) with "
              f"{o.other.title or o.other.track_id} "
              f"({_minutes(o.other.duration_s)}): between {minutes_seconds(o.track_start_s)} and "
              f"{minutes_seconds(o.track_end_s)} of it, from {minutes_seconds(o.other_start_s)} there "
              f"(ids {o.track.track_id}, {o.other.track_id})")
    if found:
        print(f"{len(found)} pair(s) of tracks share audio: while it plays either is a right answer "
              "and plays may name either; remove one (`tunetrace catalog remove ID`) if they are "
              "the same recording")
    else:
        print(f"no two tracks share {params.min_shared_s:g} s of audio or more")
    return EXIT_OK


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    problem = data_dir_problem(config.data_dir)
    if problem is not None:
        raise ConfigError(problem)
    source = args.config or "built-in defaults / $TUNETRACE_CONFIG"
    print(f"{source}: OK (encoder {config.encoder.name}, catalog {redact_url(config.milvus_uri())})")
    return EXIT_OK




def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of files, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds (e.g. 5)")
    return value


def add_catalog_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ingest, identify, catalog and check-config."""
    p = sub.add_parser("ingest", help="add audio files or folders to the catalog")
    add_config_option(p)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--replace", action="store_true", help="re-ingest files already in the catalog")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.add_argument(
        "--progress-every", type=_positive_seconds, default=5.0, metavar="SECONDS",
        help="without a terminal (systemd, cron, a pipe): print a progress line this often (default 5)",
    )
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("identify", help="identify audio files against the catalog")
    add_config_option(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    p.add_argument(
        "--batch-files", type=_at_least_one, default=1, metavar="N",
        help="answer N files at a time with one search request (more files per second; each "
             "file's answer then waits for its group's; default 1)",
    )
    p.set_defaults(func=_cmd_identify)

    p = sub.add_parser("catalog", help="inspect or edit the catalog")
    add_config_option(p)
    catalog_sub = p.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    for name, text in (("list", "list tracks"), ("stats", "catalog size and encoder")):
        q = catalog_sub.add_parser(name, help=text)
        add_config_option(q, nested=True)
        q.add_argument("--json", action="store_true")
    q = catalog_sub.add_parser(
        "overlaps", help="pairs of tracks that share audio (remasters, edits, the same recording twice)",
    )
    add_config_option(q, nested=True)
    q.add_argument("--min-shared-s", type=_positive_seconds, default=20.0, metavar="SECONDS",
                   help="report only audio shared over at least this long (default 20)")
    q.add_argument("--json", action="store_true", help="one JSON object per pair, one per line")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    q.add_argument("--progress-every", type=_positive_seconds, default=5.0, metavar="SECONDS",
                   help="print a progress line this often (default 5)")
    q = catalog_sub.add_parser("remove", help="remove a track and its vectors")
    add_config_option(q, nested=True)
    q.add_argument("track_id", type=int, metavar="TRACK_ID")
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    add_config_option(p)
    p.set_defaults(func=_cmd_check_config)
