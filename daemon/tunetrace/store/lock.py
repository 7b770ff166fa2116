"""Our own lock on an embedded (Milvus Lite) catalog: one process opens it at a time.

Milvus Lite locks a database to its first process, but a second opener that is refused deletes
the holder's ``.<name>.db.lock``, after which a third opener succeeds beside the first: two
processes then write one catalog.  So tunetrace takes an ``flock`` on a file it owns,
``<catalog>.owner``, *before* Milvus Lite is touched: a refused opener never reaches Milvus Lite
and so never deletes anything.  The kernel drops the lock when its holder exits, even on
``kill -9``, so a stale lock cannot exist.  The file records who holds it (pid, command, the
daemon's control socket) only to say in the refusal what to do.

Milvus Lite keeps serving a database in the process that opened it even after its client is
closed, so a process keeps our lock until it exits too: a later opener in the same process shares
it, another process is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tunetrace.errors import CatalogBusyError

OWNER_SUFFIX = ".owner"


def owner_file(catalog_path: Path) -> Path:
    """The file tunetrace locks for the Milvus Lite catalog at ``catalog_path``."""
    return catalog_path.with_name(catalog_path.name + OWNER_SUFFIX)


@dataclass(frozen=True)
class Holder:
    """Who holds a catalog, as the holder wrote it down."""

    pid: int
    command: str
    control_socket: str | None


_HELD: dict[Path, int] = {}
"""Catalogs this process has locked, and the descriptor holding each lock (until exit)."""
_HELD_GUARD = threading.Lock()


class CatalogLock:
    """This process's exclusive hold on one Lite catalog (kept until the process exits)."""

    def __init__(self, catalog_path: Path, fd: int) -> None:
        self.catalog_path = catalog_path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, catalog_path: Path, *, command: str | None = None) -> CatalogLock:
        """Lock ``catalog_path`` or raise ``CatalogBusyError`` saying who holds it and what to do."""
        with _HELD_GUARD:
            held = _HELD.get(catalog_path)
            if held is not None:
                return cls(catalog_path, held)
            path = owner_file(catalog_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CatalogBusyError(busy_message(catalog_path, read_holder(catalog_path))) from None
            _HELD[catalog_path] = fd
        lock = cls(catalog_path, fd)
        lock.record(command=command or _command_line(), control_socket=None)
        return lock

    def record(self, *, command: str | None = None, control_socket: Path | None) -> None:
        """Write who holds the lock (the daemon adds its control socket once it listens)."""
        if self._fd is None:
            return
        holder = {
            "pid": os.getpid(),
            "command": command or _command_line(),
            "control_socket": str(control_socket) if control_socket else None,
        }
        data = json.dumps(holder).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Forget this handle; the process keeps the lock (Milvus Lite keeps the database open in
        it) and the kernel drops it at exit. A control socket it advertised is withdrawn."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            holder = read_holder(self.catalog_path)
            if holder is not None and holder.control_socket:
                data = json.dumps({"pid": os.getpid(), "command": holder.command,
                                   "control_socket": None}).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)


def read_holder(catalog_path: Path) -> Holder | None:
    """What the holder of ``catalog_path`` wrote down (``None``: nothing readable)."""
    try:
        raw = json.loads(owner_file(catalog_path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("pid"), int):
        return None
    socket = raw.get("control_socket")
    return Holder(int(raw["pid"]), str(raw.get("command", "")), str(socket) if socket else None)


def busy_message(catalog_path: Path, holder: Holder | None) -> str:
    who = f"process {holder.pid} (`{holder.command}`)" if holder else "another tunetrace process"
    if holder is not None and holder.control_socket:
        return (
            f"the catalog {catalog_path} is open in the running daemon, {who}; Milvus Lite allows "
            "one process per catalog. `tunetrace ingest` and `tunetrace catalog remove` with the "
            "daemon's --config hand their work to it; for anything else stop the daemon first, or "
            "move the catalog to a Milvus server (milvus.uri), which any number of processes share."
        )
    return (
        f"the catalog {catalog_path} is in use by {who}; Milvus Lite allows one process per "
        "catalog. Wait for it to finish (or stop it) and run this again, or move the catalog to a "
        "Milvus server (milvus.uri), which any number of processes share."
    )


def _command_line() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    # Only the program and its subcommand: arguments may name files or carry values not to echo.
    return " ".join([name, *(a for a in sys.argv[1:2] if not a.startswith("-"))])
