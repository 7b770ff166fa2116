"""Find the audio files an ingest should consider, and their optional CSV metadata sidecar."""

from __future__ import annotations

import csv
import errno
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunetrace.audio.decode import audio_stream_sha256
from tunetrace.errors import ConfigError


@dataclass(frozen=True)
class ScanProblem:
    """A path under an ingested folder that could not be considered, and why (one line)."""

    path: Path
    reason: str


def scan_paths(
    paths: Iterable[Path], extensions: Iterable[str], problems: list[ScanProblem] | None = None,
    *, follow_symlinks_out: bool = False,
) -> Iterator[Path]:
    """Files named explicitly, plus files with an audio suffix found recursively in folders.

    Sorted within each folder so runs are reproducible; hidden files and folders are skipped.
    What cannot be looked at is appended to ``problems`` instead of being skipped in silence: a
    subfolder this user may not read, a name too long for the file system, and (unless
    ``follow_symlinks_out``) a link that leads out of the folder being ingested, which would
    otherwise let ``ingest /srv/music`` read ``/etc/shadow`` through a planted link.
    """
    suffixes = {s.lower() for s in extensions}
    for path in paths:
        if _is_dir(path):
            yield from _scan_folder(path, suffixes, problems, follow_symlinks_out)
        else:
            yield path  # what is wrong with it (a name too long ...) is reported by the caller


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _scan_folder(
    root: Path, suffixes: set[str], problems: list[ScanProblem] | None, follow_symlinks_out: bool,
) -> Iterator[Path]:
    inside = root.resolve()

    def unreadable(error: OSError) -> None:
        where = Path(error.filename) if error.filename else root
        if problems is not None:
            problems.append(ScanProblem(where, f"{where}: cannot list the folder: {_why(error)}"))

    for folder, subfolders, names in os.walk(root, onerror=unreadable):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            found = Path(folder) / name
            if name.startswith(".") or found.suffix.lower() not in suffixes:
                continue
            # A broken link is yielded too, so that it is reported rather than silently skipped.
            if found.is_symlink() and found.exists() and not follow_symlinks_out:
                target = found.resolve()
                if not target.is_relative_to(inside):
                    if problems is not None:
                        problems.append(ScanProblem(found, (
                            f"{found}: a symbolic link out of {root} (to {target}); not followed: name the "
                            "target itself, or set ingest.follow_symlinks_out: true"
                        )))
                    continue
            yield found


def _why(error: OSError) -> str:
    if error.errno == errno.EACCES:
        return "permission denied; make it readable (and enterable) by this user"
    return error.strerror or str(error)


def content_hash(path: Path) -> str:
    """The recording's identity: SHA-256 of its audio stream, tags excluded.

    It makes re-ingest idempotent and lets a re-tagged file update its track (same id) instead of
    adding a duplicate; hashing the file's bytes, as catalogs of layout 2 did, changed with every tag.
    Raises ``OSError`` with the system's reason when the file cannot be read at all.
    """
    with path.open("rb") as handle:  # an unreadable file fails here, in the OS's words
        handle.read(1)
    return audio_stream_sha256(path)


@dataclass(frozen=True)
class SidecarEntry:
    title: str | None
    artist: str | None
    album: str | None
    isrc: str | None = None


_ISRC = re.compile(r"^[A-Z]{2}[A-Z0-9]{3}[0-9]{7}$")


def normalise_isrc(text: str) -> str:
    """``GB-AYE-06-01498`` and ``gbaye0601498`` are the same ISRC: 12 characters, upper case.

    Anything that is not an ISRC after that (tags carry all sorts of text) becomes ``""``: a
    report keyed by ISRC must not carry a wrong one.
    """
    code = text.replace("-", "").replace(" ", "").strip().upper()
    return code if _ISRC.match(code) else ""


def load_sidecar(csv_path: Path) -> dict[Path, SidecarEntry]:
    """Read ``path,title,artist,album,isrc`` rows; relative paths are relative to the CSV's folder."""
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ConfigError(
                    f"ingest.metadata_csv: {csv_path} needs a header row with a 'path' column "
                    "(and any of title, artist, album, isrc)"
                )
            entries: dict[Path, SidecarEntry] = {}
            for row in reader:
                target = Path(row["path"])
                if not target.is_absolute():
                    target = csv_path.parent / target
                entries[target.resolve()] = SidecarEntry(
                    row.get("title") or None, row.get("artist") or None, row.get("album") or None,
                    normalise_isrc(row.get("isrc") or "") or None,
                )
            return entries
    except OSError as exc:
        raise ConfigError(f"ingest.metadata_csv: cannot read {csv_path}: {exc.strerror}") from None
