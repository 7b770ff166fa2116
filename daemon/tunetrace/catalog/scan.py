"""Find the audio files an ingest should consider, and their optional CSV metadata sidecar."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunetrace.audio.decode import audio_stream_sha256
from tunetrace.errors import ConfigError


def scan_paths(paths: Iterable[Path], extensions: Iterable[str]) -> Iterator[Path]:
    """Files named explicitly, plus files with an audio suffix found recursively in folders.

    Sorted within each folder so runs are reproducible; hidden files and folders are skipped.
    """
    suffixes = {s.lower() for s in extensions}
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                relative = found.relative_to(path)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                # A broken link is yielded too, so that it is reported rather than silently skipped.
                broken_link = found.is_symlink() and not found.exists()
                if (found.is_file() or broken_link) and found.suffix.lower() in suffixes:
                    yield found
        else:
            yield path


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
