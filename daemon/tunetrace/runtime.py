"""Open the encoder and the catalog the way every command needs them: once, with clear errors."""

from __future__ import annotations

import logging
import os
import sys

from tunetrace.config import Config
from tunetrace.encoders import Encoder, create_encoder
from tunetrace.store import CatalogStore

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr; under systemd the journal adds its own timestamps."""
    fmt = "%(levelname)s %(name)s: %(message)s" if "INVOCATION_ID" in os.environ else _LOG_FORMAT
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    for noisy in ("towhee", "milvus_lite", "faiss"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # pymilvus warns on every iterator over Milvus Lite ("failed to get mvccTs"), and Lite's
    # in-process gRPC server logs a harmless "AllocTimestamp not implemented" trace.
    logging.getLogger("pymilvus").setLevel(max(logging.ERROR, logging.getLevelName(level)))
    logging.getLogger("grpc").setLevel(logging.CRITICAL)


def open_encoder(config: Config) -> Encoder:
    return create_encoder(config.encoder, config.data_dir)


def open_store(config: Config, encoder: Encoder, *, create: bool) -> CatalogStore:
    return CatalogStore.open(config.milvus, config.milvus_uri(), encoder.info, create=create)
