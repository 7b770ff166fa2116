"""Title, artist, album, ISRC and duration from a file's tags: the only mutagen import.

mutagen is the maintained pure-Python tag library (ID3v1/v2 in MP3, WAV and AIFF; Vorbis comments
in Ogg Vorbis, Opus and FLAC; MP4/M4A atoms; ASF): it reads each format's own frames, ISRC
included (ID3 ``TSRC``, Vorbis ``ISRC``, MP4 ``----:com.apple.iTunes:ISRC``), without a child
process per file. ffprobe (``audio.decode.probe_tags``) stays the fallback for what mutagen does
not know, and the file stem the last resort for a title.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Public names that mutagen before 1.48 does not re-export explicitly (1.48 does: the ignore may be unused).
from mutagen import File as MutagenFile  # type: ignore[attr-defined, unused-ignore]
from mutagen import MutagenError  # type: ignore[attr-defined, unused-ignore]
from mutagen.easyid3 import EasyID3
from mutagen.easymp4 import EasyMP4Tags

log = logging.getLogger(__name__)

# EasyID3 maps "isrc" to TSRC already; MP4 keeps ISRC as an iTunes freeform atom.
if "isrc" not in EasyMP4Tags.Set:
    EasyMP4Tags.RegisterFreeformKey("isrc", "ISRC")  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class FileTags:
    """What the tags say; ``""`` where they say nothing, ``duration_s`` 0 when unknown."""

    title: str = ""
    artist: str = ""
    album: str = ""
    isrc: str = ""
    duration_s: float = 0.0


def read_tags(path: Path) -> FileTags | None:
    """The file's tags, or ``None`` when mutagen does not recognise the format (use ffprobe)."""
    try:
        audio: Any = MutagenFile(path, easy=True)
    except (MutagenError, OSError, ValueError) as exc:
        log.debug("%s: mutagen cannot read its tags: %s", path, exc)
        return None
    if audio is None:
        return None
    tags: Any = audio.tags
    if tags is not None and not isinstance(tags, EasyID3 | EasyMP4Tags) and hasattr(tags, "as_dict"):
        tags = tags.as_dict()  # Vorbis comments: case-insensitive keys
    info = getattr(audio, "info", None)
    return FileTags(
        title=_first(tags, ("title",)),
        artist=_first(tags, ("artist", "albumartist", "album_artist")),
        album=_first(tags, ("album",)),
        isrc=_first(tags, ("isrc",)),
        duration_s=float(getattr(info, "length", 0.0) or 0.0),
    )


def _first(tags: Any, keys: Iterable[str]) -> str:
    if tags is None:
        return ""
    for key in keys:
        for candidate in (key, key.upper()):
            try:
                values = tags[candidate]
            except (KeyError, ValueError, TypeError):
                continue
            text = str(values[0] if isinstance(values, list) and values else values).strip()
            if text:
                return text
    return ""
