"""Find the audio files an ingest should consider, and their optional CSV metadata sidecar."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunetrace.errors import ConfigError
from tunetrace.hashing import file_sha256


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
    """SHA-256 of the file's bytes: the identity that makes re-ingest idempotent."""
    return file_sha256(path)


@dataclass(frozen=True)
class SidecarEntry:
    title: str | None
    artist: str | None
    album: str | None


def load_sidecar(csv_path: Path) -> dict[Path, SidecarEntry]:
    """Read ``path,title,artist,album`` rows; relative paths are relative to the CSV's folder."""
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ConfigError(
                    f"ingest.metadata_csv: {csv_path} needs a header row with a 'path' column "
                    "(and any of title, artist, album)"
                )
            entries: dict[Path, SidecarEntry] = {}
            for row in reader:
                target = Path(row["path"])
                if not target.is_absolute():
                    target = csv_path.parent / target
                entries[target.resolve()] = SidecarEntry(
                    row.get("title") or None, row.get("artist") or None, row.get("album") or None
                )
            return entries
    except OSError as exc:
        raise ConfigError(f"ingest.metadata_csv: cannot read {csv_path}: {exc.strerror}") from None
