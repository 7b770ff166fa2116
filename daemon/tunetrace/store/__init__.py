"""The catalog: values and the ``Catalog`` Protocol in ``base``; Milvus behind ``milvus`` only.

``open_catalog`` imports the Milvus adapter when called, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunetrace.store.base import (
    TRACK_ID_BITS,
    Catalog,
    CatalogShape,
    Hit,
    Reference,
    Track,
    TrackSpan,
    catalog_shape,
    track_id_for,
)

if TYPE_CHECKING:
    from tunetrace.config import MilvusConfig
    from tunetrace.encoders.base import EncoderInfo
    from tunetrace.store.milvus import CatalogStore

__all__ = [
    "TRACK_ID_BITS", "Catalog", "CatalogShape", "Hit", "Reference", "Track", "TrackSpan", "catalog_shape",
    "open_catalog", "track_id_for",
]


def open_catalog(
    config: MilvusConfig, uri: str, info: EncoderInfo, *, create: bool, live: bool = False,
) -> CatalogStore:
    """Connect to the catalog at ``uri`` and check (or, with ``create``, initialise) its encoder
    record; ``live``: searched with the daemon's live search parameters."""
    from tunetrace.store.milvus import CatalogStore

    return CatalogStore.open(config, uri, info, create=create, live=live)
