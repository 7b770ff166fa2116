"""The daemon's control socket: catalog changes handed to a running daemon, with progress back.

Milvus Lite lets one process open a catalog, and the daemon holds it while every station
monitors; so ``tunetrace ingest`` and ``tunetrace catalog remove`` hand their work to the daemon
over a Unix socket in its data directory (``control.sock``, mode 0600: only the daemon's user, and
root, may connect). With a Milvus server any process writes the catalog itself and only asks the
local daemon, if one listens, to refresh its view at once instead of at its next periodic refresh.

The protocol is JSON Lines, one request per connection::

    -> {"op": "ingest", "paths": ["/abs/a.mp3", ...], "replace": false}
    <- {"type": "file", "path": ..., "status": "added", "reason": "", "track_id": ..., ...}  (per file)
    <- {"type": "done", "added": 1, ...}            or   {"type": "error", "message": "..."}

    -> {"op": "remove", "track_id": 123}            <- {"type": "done", "removed": true}
    -> {"op": "refresh"}                            <- {"type": "done", "tracks": 42}

The daemon side is ``ControlServer`` (asyncio) around a ``ControlHandler``; the command side is
``request`` (blocking sockets: the CLI is synchronous).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from tunetrace.errors import CatalogError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
_MAX_LINE = 1 << 24
"""A request names files; 16 MiB of paths is far more than any ingest hands over."""
_CONNECT_TIMEOUT_S = 5.0

Message = dict[str, Any]
Emit = Callable[[Message], Awaitable[None]]


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


class ControlHandler(Protocol):
    """What the daemon does for each request; each returns the final ``done`` message's fields."""

    async def ingest(self, paths: list[Path], replace: bool, emit: Emit) -> Message: ...

    async def remove(self, track_id: int) -> Message: ...

    async def refresh(self) -> Message: ...


class ControlServer:
    """Listens on ``path``; one request per connection, served one at a time (ingest is heavy)."""

    def __init__(self, path: Path, handler: ControlHandler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._busy = asyncio.Lock()

    async def start(self) -> None:
        if len(os.fsencode(self.path)) >= 104:  # sun_path is 104-108 bytes depending on the OS
            raise CatalogError(
                f"control socket path {self.path} is too long for a Unix socket; use a shorter data_dir"
            )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a leftover of a daemon that was killed (we hold the catalog lock)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=_MAX_LINE)
        finally:
            os.umask(old_umask)
        log.info("control socket listening at %s (tunetrace ingest / catalog remove reach the daemon)",
                 self.path)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def emit(message: Message) -> None:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()

        try:
            line = await reader.readline()
            if not line:  # a probe (``listening``) or a client that gave up
                return
            request = json.loads(line)
            async with self._busy:
                result = await self._dispatch(request, emit)
            await emit({"type": "done", **result})
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("control client went away before its request finished")
        except (ValueError, TypeError, KeyError, CatalogError) as exc:
            with contextlib.suppress(ConnectionError):
                await emit({"type": "error", "message": str(exc)})
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _dispatch(self, request: Any, emit: Emit) -> Message:
        if not isinstance(request, dict):
            raise ValueError("control request: expected one JSON object per line")
        op = request.get("op")
        if op == "ingest":
            paths = request["paths"]
            if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
                raise ValueError("control request: 'paths' must be a list of file paths")
            return await self._handler.ingest([Path(p) for p in paths], bool(request.get("replace")), emit)
        if op == "remove":
            return await self._handler.remove(int(request["track_id"]))
        if op == "refresh":
            return await self._handler.refresh()
        raise ValueError(f"control request: unknown op {op!r} (ingest, remove or refresh)")


def request(path: Path, message: Message, on_message: Callable[[Message], None] | None = None,
            *, timeout_s: float | None = None) -> Message:
    """Send one request to the daemon at ``path`` and return its ``done`` message (blocking).

    Each intermediate message (an ingest's per-file outcome) goes to ``on_message``. Raises
    ``CatalogError`` if the daemon cannot be reached or reports an error.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except OSError as exc:
            reason = exc.strerror or exc
            raise CatalogError(f"cannot reach the daemon's control socket {path}: {reason}") from exc
        sock.settimeout(timeout_s)
        sock.sendall(json.dumps(message).encode() + b"\n")
        with sock.makefile("rb") as stream:
            for line in stream:
                reply = json.loads(line)
                kind = reply.get("type")
                if kind == "done":
                    return dict(reply)
                if kind == "error":
                    raise CatalogError(f"the daemon refused the request: {reply.get('message')}")
                if on_message is not None:
                    on_message(reply)
    raise CatalogError(f"the daemon at {path} closed the connection before finishing (did it stop?)")


def listening(path: Path) -> bool:
    """Whether a daemon accepts connections at ``path`` now."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
