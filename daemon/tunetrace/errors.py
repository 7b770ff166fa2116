"""The exception tree, in one place.

    TunetraceError
    ├── ConfigError          bad config file: names the key and the fix; the CLI exits 78 (EX_CONFIG)
    ├── DecodeError          one input file could not be decoded; other files go on
    ├── SourceError          a live source failed (stream gone, device lost); the station reconnects
    ├── ModelError           encoder weights missing or malformed; says which file to place where
    │   └── DownloadError    weights could not be downloaded (offline, HTTP error, timeout)
    └── CatalogError         store unreachable, or a catalog built by another encoder
        ├── CatalogMismatchError
        └── CatalogBusyError an embedded catalog is open in another process: says who and what to do
"""

from __future__ import annotations


class TunetraceError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(TunetraceError):
    """The configuration is invalid; the message names the key and what to do."""


class DecodeError(TunetraceError):
    """An audio input could not be decoded."""


class SourceError(TunetraceError):
    """One source session failed (connection refused, decoder exited, device vanished)."""


class ModelError(TunetraceError):
    """Encoder weights are missing, unreadable or do not match the expected layout."""


class CatalogError(TunetraceError):
    """The catalog (Milvus) cannot be used."""


class CatalogMismatchError(CatalogError):
    """The catalog was built with a different encoder, dimension, window or hop."""


class DownloadError(ModelError):
    """A file could not be downloaded (offline, HTTP error, timeout); the message says what to
    place where by hand."""


class CatalogBusyError(CatalogError):
    """An embedded (Milvus Lite) catalog is held by another process; the message names it and
    what to do (hand the work to the daemon, wait, or use a Milvus server)."""
