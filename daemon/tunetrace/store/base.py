"""The catalog's values and the one Protocol the recognition stages see.

Voting, the live pipeline and one-shot identification work on these plain values and on the
``Catalog`` Protocol; only ``store.milvus`` talks to Milvus.  Importing this module loads neither
pymilvus nor grpc, so the pure stages import in milliseconds and unit tests serve them from
``tests/fakes.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Track:
    track_id: int
    title: str
    artist: str
    album: str
    duration_s: float
    source_path: str
    content_hash: str
    n_vectors: int
    ingested_at: float
    isrc: str = ""
    """International Standard Recording Code from the tags or the metadata CSV (``""``: none)."""

    def same_metadata(self, other: Track) -> bool:
        """Whether a re-ingest of the same audio would leave this track's metadata as it is."""
        return (self.title, self.artist, self.album, self.isrc) == (
            other.title, other.artist, other.album, other.isrc)


@dataclass(frozen=True)
class Hit:
    """One nearest-neighbour result for one query window."""

    query_index: int
    track_id: int
    offset_s: float
    similarity: float


TRACK_ID_BITS = 53
"""Track ids travel as JSON numbers (MQTT, the play log); JavaScript reads integers exactly only
below 2**53 (Home Assistant's frontend, Node-RED), so ids stay under that. Collisions stay
negligible: about one in 18,000 for a million recordings."""


def track_id_for(content_hash: str) -> int:
    """A stable id derived from the content hash: the same recording gets the same id everywhere."""
    digest = hashlib.sha256(content_hash.encode()).digest()[:8]
    return int.from_bytes(digest, "big") & ((1 << TRACK_ID_BITS) - 1)


@dataclass(frozen=True)
class TrackSpan:
    """A stretch of one catalog track: the windows that start within ``[from_s, to_s]``."""

    track_id: int
    from_s: float
    to_s: float


@dataclass(frozen=True)
class Reference:
    """A track's stored windows over one ``TrackSpan``: what a candidate match is verified against."""

    vectors: np.ndarray
    offsets_s: np.ndarray


@dataclass(frozen=True)
class CatalogShape:
    """What the chance correction needs to know about the catalog."""

    total_vectors: int
    track_vectors: Mapping[int, int]



class Catalog(Protocol):
    """What recognition needs from a catalog: nearest windows and track metadata (read only)."""

    def search(self, vectors: np.ndarray, top_k: int) -> list[list[Hit]]:
        """``top_k`` nearest catalog windows per query vector (``CatalogError`` when unreachable)."""
        ...

    def get_tracks(self, track_ids: Sequence[int]) -> dict[int, Track]: ...

    def tracks(self) -> list[Track]:
        """Every complete track (its shape feeds the chance correction)."""
        ...

    def references(self, spans: Sequence[TrackSpan]) -> list[Reference]:
        """The stored windows of each span in offset order, in one request (``CatalogError`` when
        unreachable)."""
        ...


def catalog_shape(tracks: Sequence[Track]) -> CatalogShape:
    """The chance correction's view of a catalog's tracks."""
    return CatalogShape(
        total_vectors=sum(t.n_vectors for t in tracks),
        track_vectors={t.track_id: t.n_vectors for t in tracks},
    )
