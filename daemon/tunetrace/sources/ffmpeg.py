"""Anything ffmpeg reads: Icecast/Shoutcast over HTTP(S), HLS ``.m3u8``, RTSP, or a local file.

ffmpeg runs as a child with an argument list (never a shell string) and writes mono ``f32le`` at the
encoder's rate to a pipe; one session is one ffmpeg process.  The last lines of its stderr are
kept so a failure names its cause.  Credentials in URLs never reach the logs, nor the child's
command line (``/proc/<pid>/cmdline`` is world-readable, so ``ps`` would show them): a URL with a
user name, password or token is handed to ffmpeg on its stdin, as a one-entry ``ffconcat`` script,
and ffmpeg's command line only says ``-f concat -i pipe:0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from tunetrace.audio.decode import pcm_output_args
from tunetrace.errors import SourceError
from tunetrace.redact import redact_text, redact_url, url_has_secrets

log = logging.getLogger(__name__)

BLOCK_S = 0.25
"""Audio per block read from ffmpeg: small enough for low latency, large enough to be cheap."""
_STDERR_LINES = 20
_NETWORK_TIMEOUT_US = 10_000_000
_TERMINATE_GRACE_S = 1.0


def _looks_like_mp3(url: str) -> bool:
    path = urlsplit(url).path.lower()
    return path.endswith(".mp3") or path.endswith("/mp3") or "mpeg" in path


def input_args(url: str, *, realtime: bool, loop: bool) -> list[str]:
    """ffmpeg options placed before ``-i`` for this kind of input."""
    scheme = urlsplit(url).scheme.lower()
    args: list[str] = []
    if scheme in ("http", "https"):
        # ffmpeg's own reconnect covers short drops; SourceRunner's backoff covers the rest.
        args += [
            "-reconnect", "1", "-reconnect_streamed", "1", "-reconnect_on_network_error", "1",
            "-reconnect_delay_max", "4", "-rw_timeout", str(_NETWORK_TIMEOUT_US),
        ]
        if _looks_like_mp3(url):
            # Without probing limits an Icecast mp3 reader takes ~4.5 s to start; with them ~0.5 s.
            args += ["-f", "mp3", "-probesize", "4096", "-analyzeduration", "0"]
    elif scheme in ("rtsp", "rtsps"):
        args += ["-rtsp_transport", "tcp", "-timeout", str(_NETWORK_TIMEOUT_US)]
    elif scheme in ("", "file"):
        if loop:
            args += ["-stream_loop", "-1"]
        if realtime:
            args += ["-re"]
    return args


_STDIN_PROTOCOLS = "pipe,file,http,https,tcp,tls,crypto,rtsp,rtsps,rtp,udp,hls,httpproxy"
"""What the inner URL of a stdin script may use; ``file`` is absent from none of ffmpeg's defaults
either, but ``concat`` / ``subfile`` (reading other files) are left out."""


def ffmpeg_args(url: str, sample_rate: int, *, realtime: bool, loop: bool) -> list[str]:
    """The command line; for a URL with credentials it names no URL at all (see ``stdin_script``)."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise SourceError("ffmpeg is not installed or not on PATH (Debian: apt-get install ffmpeg)")
    if url_has_secrets(url):
        source = ["-f", "concat", "-safe", "0", "-protocol_whitelist", _STDIN_PROTOCOLS, "-i", "pipe:0"]
    elif not urlsplit(url).scheme:  # a path: by the file protocol only, never read as a protocol
        source = [
            *input_args(url, realtime=realtime, loop=loop), "-protocol_whitelist", "file",
            "-i", f"file:{Path(url).absolute()}",
        ]
    else:
        source = [*input_args(url, realtime=realtime, loop=loop), "-i", url]
    return [
        binary, "-nostdin", "-hide_banner", "-loglevel", "error", *source,
        *pcm_output_args(sample_rate, BLOCK_S),
    ]


def _ffconcat_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def stdin_script(url: str) -> bytes:
    """The ``ffconcat`` script that opens ``url`` with the options ``input_args`` would have given.

    ffmpeg's concat demuxer reads the whole script at start-up and passes each ``option`` line to
    the inner open (protocol options such as ``reconnect``, format options such as ``probesize``);
    a forced format (``-f mp3``) has no equivalent, so the small probe size does that job.
    """
    lines = ["ffconcat version 1.0", f"file {_ffconcat_quote(url)}"]
    args = input_args(url, realtime=False, loop=False)
    pairs = [(args[i], args[i + 1]) for i in range(0, len(args) - 1, 2)]
    lines += [f"option {name.lstrip('-')} {_ffconcat_quote(value)}" for name, value in pairs if name != "-f"]
    return ("\n".join(lines) + "\n").encode("utf-8")


def is_local_file(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("", "file")


class FfmpegSource:
    """One ffmpeg process per session; ``realtime`` is true for network streams and paced files."""

    def __init__(self, url: str, sample_rate: int, *, realtime: bool = True, loop: bool = False) -> None:
        self._url = url
        self._sample_rate = sample_rate
        self._local = is_local_file(url)
        self._pace = realtime
        self._loop = loop

    @property
    def description(self) -> str:
        return f"ffmpeg {redact_url(self._url)}"

    @property
    def realtime(self) -> bool:
        return self._pace or not self._local

    async def session(self) -> AsyncIterator[np.ndarray]:
        if self._local and not await asyncio.to_thread(Path(urlsplit(self._url).path or self._url).exists):
            raise SourceError(f"{self._url}: no such file; check source.url")
        args = ffmpeg_args(self._url, self._sample_rate, realtime=self._pace, loop=self._loop)
        secret = url_has_secrets(self._url)
        process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE if secret else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        if process.stdin is not None:
            await _hand_over(process.stdin, stdin_script(self._url))
        stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES)
        stderr_task = asyncio.create_task(
            _drain(process.stderr, stderr_tail, self._url), name="ffmpeg-stderr",
        )
        block_bytes = round(BLOCK_S * self._sample_rate) * 4
        try:
            while True:
                try:
                    chunk = await process.stdout.readexactly(block_bytes)
                except asyncio.IncompleteReadError as partial:
                    chunk = partial.partial
                usable = len(chunk) - len(chunk) % 4
                if usable:
                    yield np.frombuffer(chunk[:usable], dtype="<f4").astype(np.float32)
                if len(chunk) < block_bytes:
                    break
            returncode = await process.wait()
            await stderr_task
            if returncode != 0:
                reason = stderr_tail[-1] if stderr_tail else f"ffmpeg exited with status {returncode}"
                raise SourceError(redact_text(reason))  # the runner's log line names the station
        finally:
            await _stop(process)
            stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stderr_task


async def _drain(stream: asyncio.StreamReader, tail: deque[str], url: str) -> None:
    """Keep ffmpeg's last lines for the error; the station's URL is replaced (the log line names
    the station, and a URL may carry credentials)."""
    async for line in stream:
        text = redact_text(line.decode("utf-8", "replace").rstrip().replace(url, "<source url>"))
        if text:
            tail.append(text)
            log.debug("ffmpeg: %s", text)


async def _hand_over(stdin: asyncio.StreamWriter, script: bytes) -> None:
    """Write the script and close stdin (ffmpeg reads to its end); a child that already died is
    reported by its exit status, not by a broken pipe here."""
    with contextlib.suppress(ConnectionError):
        stdin.write(script)
        await stdin.drain()
    stdin.close()
    with contextlib.suppress(ConnectionError):
        await stdin.wait_closed()


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Terminate, then kill after a short grace: a stuck network read must not delay shutdown."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        async with asyncio.timeout(_TERMINATE_GRACE_S):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
