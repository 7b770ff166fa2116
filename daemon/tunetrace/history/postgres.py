"""The shared history: PostgreSQL through psycopg 3 (the only module importing it).

A fleet of daemons, each monitoring its share of the stations, writes one history that one
``tunetrace report`` reads.  psycopg 3 because it is the maintained PostgreSQL driver (psycopg2
is in maintenance only), speaks the DB-API this package's SQL store needs, and ships a binary
wheel with libpq (``psycopg[binary]``), so no compiler or client library is needed to install.
"""

from __future__ import annotations

import psycopg

from tunetrace.errors import HistoryError
from tunetrace.history.base import redact_url
from tunetrace.history.sql import Dialect, SqlHistory

POSTGRES = Dialect(
    "postgresql", "%s",
    # Two daemons starting at once would race on CREATE TABLE IF NOT EXISTS; this key is arbitrary
    # but fixed ("tunetrace history schema").
    schema_lock="SELECT pg_advisory_xact_lock(7305921183)",
)
CONNECT_TIMEOUT_S = 10


def open_postgres(url: str) -> SqlHistory:
    """Connect to the PostgreSQL history at ``url`` and create its tables if needed."""
    where = redact_url(url)
    try:
        connection = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HistoryError(
            f"cannot connect to the PostgreSQL history {where}: {first}; check history.url and "
            "that the server is running and accepts this user"
        ) from None
    return SqlHistory(connection, POSTGRES, where)
