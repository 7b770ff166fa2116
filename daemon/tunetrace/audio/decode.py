"""Decode any audio ffmpeg understands into mono float32 at the encoder's sample rate.

Two decoders, one result (the same FFmpeg libraries, the same libswresample defaults):

- ``decode_file`` (queries, evaluation excerpts) decodes in-process with PyAV, which bundles
  FFmpeg's libraries: a one-shot ``identify`` of a 5 s file then costs milliseconds of decoding
  instead of an ffmpeg child process (~0.1 s to start, more on a loaded machine).
- ``iter_pcm_blocks`` (catalog ingest) keeps an ffmpeg child: a whole track decodes there on
  another core while this process embeds the previous blocks.  ffmpeg runs with an argument list
  (never a shell string) and writes raw ``f32le`` PCM to a pipe, read in fixed-size blocks so a
  long file never sits in memory twice.

Tags, duration and the audio's hash are read in-process too (PyAV's demuxers, nothing decoded).

A local file is always named to ffmpeg as ``file:<absolute path>`` with ``-protocol_whitelist file``:
ffmpeg otherwise reads a name like ``concat:a.opus|b.opus`` or ``subfile,,start,...`` as a protocol
and would happily decode other files than the one named.  The in-process decoder opens files the
same way, with the same whitelist.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunetrace.errors import DecodeError

BLOCK_SECONDS = 10.0
_STDERR_TAIL = 400


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise DecodeError(
            f"{name} is not installed or not on PATH; install it (Debian: apt-get install ffmpeg)"
        )
    return found


def ffmpeg_decode_args(
    source: str, sample_rate: int, extra_input_args: tuple[str, ...] = (), max_seconds: float | None = None,
) -> list[str]:
    """The ffmpeg command that turns ``source`` into mono f32le PCM on stdout (at most ``max_seconds``)."""
    limit = ["-t", f"{max_seconds:.3f}"] if max_seconds is not None else []
    return [
        _tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error",
        *extra_input_args, "-i", source, *limit, *pcm_output_args(sample_rate, PIPE_BLOCK_S),
    ]


PIPE_BLOCK_S = 1.0
"""Audio per pipe write when decoding a file: a few writes a second of decoding, not thousands."""


def pcm_output_args(sample_rate: int, block_s: float) -> list[str]:
    """ffmpeg output options: the first audio stream as mono f32le at ``sample_rate`` on stdout,
    written in blocks of ``block_s``.

    Without the block filter ffmpeg writes every decoded frame as it comes (an Opus file's 20 ms
    frames are 50 pipe writes per second of audio, an MP3's ~38), and the reader pays a system call
    and a wake-up for each: a third of the CPU of decoding an Opus file at full speed, and most of a
    live MP3 station's event-loop time. Resampling first makes the block count output samples; the
    samples are the same as with ``-ac 1 -ar`` alone. ``p=0``: the last block is not padded.
    """
    blocks = f"aresample={sample_rate},asetnsamples=n={round(block_s * sample_rate)}:p=0"
    return ["-vn", "-sn", "-dn", "-af", blocks, "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "pipe:1"]


LOCAL_ONLY = ("-protocol_whitelist", "file")
"""Input options for a local file: no protocol but ``file`` (so no ``concat:``, ``http:`` ...)."""


def local_source(path: Path) -> str:
    """How ffmpeg must be told about a local file: by the ``file:`` protocol, never by a bare name."""
    return f"file:{path.absolute()}"


_OS_ERRORS = {
    errno.ELOOP: "a symbolic link loop (the link points back at itself)",
    errno.ENAMETOOLONG: "the file name is too long for the file system",
    errno.EACCES: "permission denied; make it (and its folders) readable by this user",
    errno.ENOTDIR: "a part of the path is not a folder",
}


def describe_os_error(exc: OSError) -> str:
    """A plain phrase for why a path cannot be read (the caller puts the path in front)."""
    if exc.errno == errno.ENOENT:
        return "no such file"
    return _OS_ERRORS.get(exc.errno or 0, f"cannot read it: {exc.strerror or exc}")


def _check_file(path: Path) -> None:
    """Say plainly what ffmpeg would report as "Invalid argument" (or hang on) for these."""
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise DecodeError(f"{path}: a broken symbolic link") from None
        raise DecodeError(f"{path}: {describe_os_error(exc)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise DecodeError(f"{path}: is a folder, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise DecodeError(f"{path}: not a regular file (a FIFO, socket or device); name an audio file")
    if info.st_size == 0:
        raise DecodeError(f"{path}: the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise DecodeError(f"{path}: {_OS_ERRORS[errno.EACCES]}")


def iter_pcm_blocks(
    path: Path, sample_rate: int, block_s: float = BLOCK_SECONDS, max_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield consecutive blocks of decoded audio; raise ``DecodeError`` naming the file on failure.

    ``max_seconds`` stops decoding there (ffmpeg's ``-t``): a query never needs a whole hour.
    """
    _check_file(path)
    block_bytes = int(block_s * sample_rate) * 4
    with subprocess.Popen(
        ffmpeg_decode_args(local_source(path), sample_rate, LOCAL_ONLY, max_seconds),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        produced = 0
        try:
            while True:
                chunk = proc.stdout.read(block_bytes)
                if not chunk:
                    break
                usable = len(chunk) - len(chunk) % 4
                produced += usable
                yield np.frombuffer(chunk[:usable], dtype="<f4").astype(np.float32)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read().decode("utf-8", "replace").strip()
        returncode = proc.wait()
    if returncode != 0:
        reason = stderr.splitlines()[-1] if stderr else f"ffmpeg exited with status {returncode}"
        reason = reason.replace(local_source(path), str(path))  # as the user named it
        raise DecodeError(f"{path}: cannot decode audio: {reason[-_STDERR_TAIL:]}")
    if produced == 0:
        raise DecodeError(f"{path}: contains no audio stream ffmpeg can decode")


def audio_stream_sha256(path: Path) -> str:
    """SHA-256 of the file's first audio stream as coded (its packets, copied, not decoded).

    Tags live outside the audio packets in every container we read (ID3 frames, Vorbis comment
    and FLAC metadata blocks, MP4 ``moov`` atoms, cover art as a separate stream), so re-tagging
    a file keeps this digest, while any change to the audio changes it. Reading packets does not
    depend on the decoder, so an ffmpeg upgrade keeps it too.

    The packets are read in this process (PyAV's demuxer, no decoding): the digest is the one
    ``ffmpeg -map 0:a:0 -c copy -f hash -hash sha256`` prints, which catalogs were keyed by
    before (``tests/test_decode.py`` pins the equality), without a child process per file.
    """
    import av  # as in ``_decode_in_process``: only when a file is read

    _check_file(path)
    digest = hashlib.sha256()
    with _open_container(path, "not a readable audio file") as container:
        stream = _first_audio_stream(container, path, "not a readable audio file")
        try:
            for packet in container.demux(stream):
                if packet.size:
                    digest.update(memoryview(packet))
        except av.FFmpegError as exc:
            raise DecodeError(f"{path}: not a readable audio file: {_av_reason(exc, path)}") from None
    return digest.hexdigest()


@contextlib.contextmanager
def _open_container(path: Path, failure: str) -> Iterator[Any]:
    """The file opened by FFmpeg's demuxers in this process (the ``file`` protocol only)."""
    import av

    try:
        container = av.open(local_source(path), options=dict([LOCAL_ONLY]))
    except av.FFmpegError as exc:
        raise DecodeError(f"{path}: {failure}: {_av_reason(exc, path)}") from None
    with container:
        yield container


def _first_audio_stream(container: Any, path: Path, failure: str) -> Any:
    if not container.streams.audio:
        raise DecodeError(f"{path}: {failure}: the file has no audio stream")
    return container.streams.audio[0]


def decode_file(path: Path, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """The file (its first ``max_seconds``) as one mono float32 array (queries, evaluation excerpts).

    Decoded in this process (PyAV): no child process to start per query.
    """
    _check_file(path)
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    blocks: list[np.ndarray] = []
    produced = 0
    with contextlib.closing(_decode_in_process(path, sample_rate)) as decoded:  # closes the file early
        for block in decoded:
            blocks.append(block)
            produced += block.size
            if limit is not None and produced >= limit:
                break
    if produced == 0:
        raise DecodeError(f"{path}: contains no audio stream ffmpeg can decode")
    audio = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return audio[:limit] if limit is not None else audio


def _decode_in_process(path: Path, sample_rate: int) -> Generator[np.ndarray, None, None]:
    """Mono float32 blocks of the first audio stream, resampled by libswresample as ffmpeg does.

    Like the ffmpeg command line, a damaged packet is skipped and a damaged tail ends the audio
    (what came before it is kept); a file that cannot be opened, or has no audio, is a
    ``DecodeError`` naming the file.
    """
    import av  # ~0.1 s: only when a file is decoded (``identify --help`` never pays it)

    with _open_container(path, "cannot decode audio") as container:
        stream = _first_audio_stream(container, path, "cannot decode audio")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.InvalidDataError:
                    continue  # one damaged packet: skipped, as the ffmpeg command line does
                for frame in frames:
                    yield from _planes(resampler.resample(frame))
        except av.FFmpegError as exc:
            if not isinstance(exc, av.InvalidDataError):
                raise DecodeError(f"{path}: cannot decode audio: {_av_reason(exc, path)}") from None
        yield from _planes(resampler.resample(None))


def _planes(frames: list[Any]) -> Iterator[np.ndarray]:
    for frame in frames:
        yield np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


def _av_reason(exc: Exception, path: Path) -> str:
    """FFmpeg's own words for why (``Invalid data found when processing input``), without the URL."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return str(reason).replace(local_source(path), str(path))[-_STDERR_TAIL:]


@dataclass(frozen=True)
class AudioTags:
    title: str
    artist: str
    album: str
    duration_s: float
    isrc: str = ""
    """As tagged (ID3 ``TSRC``, Vorbis/MP4 ``ISRC``), not yet checked."""


def probe_tags(path: Path) -> AudioTags:
    """Title, artist, album and duration from the container's tags; the file stem if untagged.

    Read in this process by FFmpeg's demuxers (PyAV: the container's header only), as ffprobe
    would report them, without starting ffprobe for every file of an ingest.
    """
    _check_file(path)
    with _open_container(path, "not a readable audio file") as container:
        stream = _first_audio_stream(container, path, "not a readable audio file")
        tags: dict[str, str] = {}
        for holder in (container.metadata, *(s.metadata for s in container.streams)):
            for key, value in holder.items():
                tags.setdefault(key.lower(), str(value))
        duration = container.duration / 1_000_000 if container.duration else 0.0
        if not duration and stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
    return AudioTags(
        title=tags.get("title", path.stem),
        artist=tags.get("artist", tags.get("album_artist", "")),
        album=tags.get("album", ""),
        duration_s=duration,
        isrc=tags.get("isrc", tags.get("tsrc", "")),
    )
