"""Training/validation audio: decoded once into an 8 kHz mono float32 ``.npy`` cache.

Sources are Debian game soundtracks (real, freely licensed music) and recorded speech, unpacked
from their packages by ``prepare``. Some ship as ``.pk3``/``.zip`` archives, so their audio
members are extracted to a temporary file and decoded with the package's own ffmpeg decoder; the
Flight of the Amazon Queen voice acting is a table of MP3 clips inside ``queen.1c``. Lossy-codec
copies (MP3/AAC/Opus, the broadcast chain) and pitch-shifted/time-stretched copies are made once
from the cache, because encoding on the fly would cost more CPU than training itself (an ffmpeg
process per pair); each copy is re-aligned to the clean track so a clean/augmented pair stays
sample-aligned (a time-stretched copy through its known time scale).
"""

from __future__ import annotations

import fnmatch
import logging
import struct
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tunetrace.audio.decode import _tool, decode_file
from tunetrace.errors import DecodeError
from tunetrace.evaluation import degrade

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".ogg", ".opus", ".mp3", ".flac", ".wav")
MAX_ALIGN_LAG_SAMPLES = 4000


QUEEN_MAGIC = b"QTBL"
QUEEN_HEADER = struct.Struct(">4s6s2sBH")
"""``QTBL``, version string, two padding bytes, compression (1 = MP3), number of entries."""
QUEEN_ENTRY = struct.Struct(">12sBII")
"""File name (NUL padded), bundle, offset and size in bytes (big-endian)."""
QUEEN_CLIPS_PER_TRACK = 200
"""Speech clips (a few seconds each) concatenated into one cached track."""


@dataclass(frozen=True)
class SourceSpec:
    """One corpus: a folder (searched recursively), a zip archive of audio files, or ``queen.1c``."""

    name: str
    path: Path
    include: tuple[str, ...] = ()
    """Glob patterns relative to ``path`` (or zip member names); empty: every audio file."""
    min_s: float = 4.0
    exclude: tuple[str, ...] = ()
    """Glob patterns of files never taken, even when ``include`` matches them."""


@dataclass(frozen=True)
class CodecSpec:
    """A lossy copy made with ffmpeg: ``codec`` is an ffmpeg encoder, ``bitrate_kbps`` its rate."""

    codec: str
    bitrate_kbps: int
    encode_rate_hz: int = 22050

    @property
    def tag(self) -> str:
        return f"{self.codec}{self.bitrate_kbps}"


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _wanted(relative: str, source: SourceSpec) -> bool:
    """Matches ``include`` (or, without one, has an audio suffix) and no ``exclude`` pattern.

    An explicit ``include`` may take files without a suffix (one soundtrack ships them so).
    """
    if source.include:
        taken = any(fnmatch.fnmatchcase(relative, pattern) for pattern in source.include)
    else:
        taken = Path(relative).suffix.lower() in AUDIO_SUFFIXES
    return taken and not any(fnmatch.fnmatchcase(relative, pattern) for pattern in source.exclude)


@dataclass(frozen=True)
class QueenEntry:
    name: str
    offset: int
    size: int


def read_queen_table(data: bytes) -> list[QueenEntry]:
    """The resource table of a ScummVM-rebuilt ``queen.1c`` (what Debian ships).

    Raises ``DecodeError`` when ``data`` is not one, or its sound is not MP3.
    """
    if len(data) < QUEEN_HEADER.size or data[:4] != QUEEN_MAGIC:
        raise DecodeError("not a rebuilt Flight of the Amazon Queen resource file (no QTBL header)")
    _, _, _, compression, count = QUEEN_HEADER.unpack_from(data)
    if compression != 1:
        raise DecodeError(f"queen.1c sound compression {compression} is not MP3 (1); only MP3 is read")
    entries = []
    for index in range(count):
        position = QUEEN_HEADER.size + index * QUEEN_ENTRY.size
        raw_name, _, offset, size = QUEEN_ENTRY.unpack_from(data, position)
        if offset + size > len(data):
            raise DecodeError(f"queen.1c entry {index} runs past the end of the file (truncated download?)")
        entries.append(QueenEntry(raw_name.split(b"\0")[0].decode("ascii", "replace"), offset, size))
    return entries


def _iter_queen_speech(source: SourceSpec) -> Iterator[tuple[str, Path]]:
    """The ``.SB`` voice clips (MP3 frames) of ``queen.1c``, concatenated by the
    ``QUEEN_CLIPS_PER_TRACK`` into temporary ``.mp3`` files (MP3 frames decode back to back)."""
    data = source.path.read_bytes()
    clips = [e for e in read_queen_table(data) if e.name.upper().endswith(".SB")]
    with tempfile.TemporaryDirectory() as tmp:
        for first in range(0, len(clips), QUEEN_CLIPS_PER_TRACK):
            group = clips[first : first + QUEEN_CLIPS_PER_TRACK]
            target = Path(tmp) / "speech.mp3"
            target.write_bytes(b"".join(data[e.offset : e.offset + e.size] for e in group))
            yield f"speech{first // QUEEN_CLIPS_PER_TRACK:03d}", target


def iter_source_files(source: SourceSpec) -> Iterator[tuple[str, Path]]:
    """Yield (track name, path to a readable audio file) for every track of ``source``.

    Zip members are extracted to a temporary file that lives until the caller asks for the next.
    """
    if source.path.is_dir():
        for path in sorted(source.path.rglob("*")):
            relative = path.relative_to(source.path)
            if path.is_file() and _wanted(relative.as_posix(), source):
                yield _safe_name(str(relative.with_suffix(""))), path
        return
    if not source.path.is_file():
        raise DecodeError(f"{source.path}: no such file or folder (is the source's package or path right?)")
    if source.path.suffix.lower() == ".1c":
        yield from _iter_queen_speech(source)
        return
    if not zipfile.is_zipfile(source.path):
        raise DecodeError(f"{source.path}: neither a folder, a zip archive of audio nor a queen.1c")
    with zipfile.ZipFile(source.path) as archive, tempfile.TemporaryDirectory() as tmp:
        for member in sorted(archive.namelist()):
            suffix = Path(member).suffix.lower()
            if member.endswith("/") or not _wanted(member, source):
                continue
            target = Path(tmp) / f"track{suffix}"
            target.write_bytes(archive.read(member))
            yield _safe_name(str(Path(member).with_suffix(""))), target


def prepare_source(source: SourceSpec, cache_dir: Path, sample_rate: int) -> list[Path]:
    """Decode every track of ``source`` into ``cache_dir/<source>/<track>.npy`` (skipping done ones).

    A track shorter than ``source.min_s`` is remembered in ``<track>.short`` so it is not decoded
    again on the next run.
    """
    min_s = source.min_s
    out_dir = cache_dir / source.name
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, path in iter_source_files(source):
        target = out_dir / f"{name}.npy"
        if (out_dir / f"{name}.short").exists():
            continue
        if not target.exists():
            try:
                audio = decode_file(path, sample_rate)
            except DecodeError as exc:
                log.warning("skipping %s: %s", name, exc)
                continue
            if audio.size < min_s * sample_rate:
                log.info("skipping %s: shorter than %.0f s", name, min_s)
                (out_dir / f"{name}.short").write_text(f"{audio.size / sample_rate:.2f}\n")
                continue
            tmp = target.with_suffix(".tmp.npy")
            np.save(tmp, audio.astype(np.float32))
            tmp.replace(target)
            log.info("%s/%s: %.1f s", source.name, name, audio.size / sample_rate)
        written.append(target)
    return written


def cached_samples(track: Path) -> int:
    """Length of a cached track without reading it (the ``.npy`` header only)."""
    return int(np.load(track, mmap_mode="r").size)


def estimate_lag(reference: np.ndarray, copy: np.ndarray, max_lag: int = MAX_ALIGN_LAG_SAMPLES) -> int:
    """Samples by which ``copy`` lags ``reference`` (codec delay), from an FFT cross-correlation."""
    n = min(reference.size, copy.size, 8000 * 60)
    a, b = reference[:n].astype(np.float64), copy[:n].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([corr[: max_lag + 1], corr[-max_lag:]])
    return int(lags[int(np.argmax(values))])


def align(copy: np.ndarray, lag: int, length: int) -> np.ndarray:
    """Shift ``copy`` back by ``lag`` samples and fit it to ``length`` (zero padding)."""
    shifted = copy[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), copy])
    out = np.zeros(length, np.float32)
    out[: min(length, shifted.size)] = shifted[:length]
    return out


def codec_roundtrip(audio: np.ndarray, sample_rate: int, codec: CodecSpec) -> np.ndarray:
    """Encode ``audio`` with ffmpeg (argument lists only) and decode it back, sample-aligned."""
    suffix = ".mp3" if "mp3" in codec.codec else ".m4a"
    with tempfile.TemporaryDirectory() as tmp:
        encoded = Path(tmp) / f"copy{suffix}"
        args = [
            _tool("ffmpeg"),
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "f32le",
            "-ar",
            str(sample_rate),
            "-ac",
            "1",
            "-i",
            "pipe:0",
            "-ar",
            str(codec.encode_rate_hz),
            "-c:a",
            codec.codec,
            "-b:a",
            f"{codec.bitrate_kbps}k",
            str(encoded),
        ]
        result = subprocess.run(args, input=audio.astype("<f4").tobytes(), capture_output=True, check=False)
        if result.returncode != 0:
            raise DecodeError(
                f"ffmpeg {codec.tag} encode failed: {result.stderr.decode(errors='replace')[-300:]}"
            )
        decoded = decode_file(encoded, sample_rate)
    return align(decoded, estimate_lag(audio, decoded), audio.size)


def prepare_codec_copies(tracks: list[Path], cache_dir: Path, sample_rate: int, codec: CodecSpec) -> None:
    """Write ``cache_dir/codec/<tag>/<source>/<track>.npy`` for every clean cached track."""
    _write_copies(
        tracks, lambda track: cache_dir / "codec" / codec.tag / track.parent.name / track.name,
        lambda audio: codec_roundtrip(audio, sample_rate, codec), f"codec {codec.tag}",
    )


def _write_copies(
    tracks: list[Path], target_of: Callable[[Path], Path], make: Callable[[np.ndarray], np.ndarray],
    label: str,
) -> None:
    """One degraded copy per cached track, written atomically; existing copies are kept (a re-run
    resumes), and a track the copy cannot be made of is logged and skipped."""
    for track in tracks:
        target = target_of(track)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            copy = make(np.load(track))
        except DecodeError as exc:
            log.warning("%s: %s", track, exc)
            continue
        tmp = target.with_suffix(".tmp.npy")
        np.save(tmp, copy)
        tmp.replace(target)
        log.info("%s: %s", label, track.name)

VARIANT_CHUNK_S = 60.0
"""Copies are made 60 s at a time: one ffmpeg run per chunk stays well inside its timeout."""
VARIANT_PREROLL_S = 1.0
"""Audio before each chunk that is processed and dropped, so compressor and codec have settled."""


@dataclass(frozen=True)
class Variant:
    """A precomputed copy of every training track, made with an ``evaluation.degrade`` function."""

    name: str
    kind: Literal["codec", "stretch"]
    """``codec``: lossy or processed, same timing; ``stretch``: pitch-shifted or time-stretched."""
    time_scale: float
    """Sample ``s`` of the clean track is sample ``s * time_scale`` of the copy (1 / tempo)."""
    make: Callable[[np.ndarray, int], np.ndarray]
    """(audio, sample rate) -> the copy, roughly ``time_scale`` times as long."""


def _codec(codec: degrade.Codec) -> Callable[[np.ndarray, int], np.ndarray]:
    return lambda audio, rate: degrade.codec_round_trip(audio, rate, codec)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("aac_32k", "codec", 1.0, _codec(degrade.AAC_32K)),
        Variant("aac_24k", "codec", 1.0, _codec(degrade.AAC_24K)),
        Variant("opus_24k", "codec", 1.0, _codec(degrade.OPUS_24K)),
        Variant("opus_16k", "codec", 1.0, _codec(degrade.OPUS_16K)),
        Variant("broadcast", "codec", 1.0, _codec(degrade.BROADCAST_AAC_48K)),
        Variant("pitch_up_1st", "stretch", 1.0, lambda a, r: degrade.pitch_shift(a, r, 1.0)),
        Variant("pitch_down_1st", "stretch", 1.0, lambda a, r: degrade.pitch_shift(a, r, -1.0)),
        Variant("tempo_up_5pct", "stretch", 1.0 / 1.05, lambda a, r: degrade.time_stretch(a, r, 1.05)),
        Variant("tempo_down_5pct", "stretch", 1.0 / 0.95, lambda a, r: degrade.time_stretch(a, r, 0.95)),
    )
}
"""Every name ``data.variants`` accepts."""


def make_variant(audio: np.ndarray, sample_rate: int, variant: Variant) -> np.ndarray:
    """``variant`` of a whole track, ``round(len * time_scale)`` samples, made chunk by chunk."""
    chunk = round(VARIANT_CHUNK_S * sample_rate)
    preroll = round(VARIANT_PREROLL_S * sample_rate)
    parts: list[np.ndarray] = []
    for start in range(0, audio.size, chunk):
        begin = max(0, start - preroll)
        body = audio[start : start + chunk]
        out = variant.make(audio[begin : start + body.size], sample_rate)
        skip = round((start - begin) * variant.time_scale)
        parts.append(degrade.fit_length(out[skip:], round(body.size * variant.time_scale)))
    copy = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return degrade.fit_length(copy, round(audio.size * variant.time_scale))


def variant_path(cache_dir: Path, name: str, source: str, stem: str) -> Path:
    return cache_dir / "variant" / name / source / f"{stem}.npy"


def prepare_variant_copies(tracks: list[Path], cache_dir: Path, sample_rate: int, variant: Variant) -> None:
    """Write ``cache_dir/variant/<name>/<source>/<track>.npy`` for every clean cached track."""
    _write_copies(
        tracks, lambda track: variant_path(cache_dir, variant.name, track.parent.name, track.stem),
        lambda audio: make_variant(audio, sample_rate, variant), f"variant {variant.name}",
    )


@dataclass(frozen=True)
class Stretched:
    """A pitch-shifted or time-stretched copy and its time scale (see ``Variant.time_scale``)."""

    audio: np.ndarray
    time_scale: float


@dataclass
class AudioPool:
    """Cached tracks in memory plus, per track, the lossy and stretched copies that exist."""

    names: list[str]
    tracks: list[np.ndarray]
    codec_copies: list[list[np.ndarray]]
    stretched: list[list[Stretched]] = field(default_factory=list)
    """Per track (or empty: none for any track)."""

    @property
    def total_samples(self) -> int:
        return sum(t.size for t in self.tracks)


def _check_variants(variants: list[str]) -> list[Variant]:
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise DecodeError(f"unknown data.variants {unknown}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[name] for name in variants]


def _codec_copy_paths(
    cache_dir: Path, source: str, stem: str, codec_tags: list[str], variants: list[Variant]
) -> list[Path]:
    paths = [cache_dir / "codec" / tag / source / f"{stem}.npy" for tag in codec_tags]
    paths += [variant_path(cache_dir, v.name, source, stem) for v in variants if v.kind == "codec"]
    return [path for path in paths if path.exists()]


def load_pool(
    cache_dir: Path,
    sources: list[str],
    codec_tags: list[str] | None = None,
    variants: list[str] | None = None,
) -> AudioPool:
    """Load every cached track of ``sources`` (and the codec copies and variants found for them)."""
    chosen = _check_variants(variants or [])
    names: list[str] = []
    tracks: list[np.ndarray] = []
    copies: list[list[np.ndarray]] = []
    stretched: list[list[Stretched]] = []
    for source in sources:
        for path in sorted((cache_dir / source).glob("*.npy")):
            if path.name.endswith(".tmp.npy"):
                continue
            names.append(f"{source}/{path.stem}")
            tracks.append(np.load(path))
            found = _codec_copy_paths(cache_dir, source, path.stem, codec_tags or [], chosen)
            # Copies are memory-mapped: ten copies of 30 h would not fit in RAM; a pair reads 2 s.
            copies.append([np.load(copy, mmap_mode="r") for copy in found])
            stretch_paths = [
                (variant_path(cache_dir, v.name, source, path.stem), v.time_scale)
                for v in chosen
                if v.kind == "stretch"
            ]
            stretched.append(
                [Stretched(np.load(p, mmap_mode="r"), scale) for p, scale in stretch_paths if p.exists()]
            )
    if not tracks:
        raise DecodeError(f"{cache_dir}: no cached tracks for {sources}; run `tunetrace train prepare` first")
    return AudioPool(names, tracks, copies, stretched)


def load_speech(cache_dir: Path, sources: list[str], sample_rate: int, max_gap_s: float = 0.3) -> np.ndarray:
    """Every cached clip of the speech ``sources`` as one stream, the silence between clips cut to
    ``max_gap_s`` (a presenter talks in sentences, not in isolated words)."""
    gap = np.zeros(round(max_gap_s * sample_rate), np.float32)
    parts: list[np.ndarray] = []
    for source in sources:
        for path in sorted((cache_dir / source).glob("*.npy")):
            if path.name.endswith(".tmp.npy"):
                continue
            clip = np.load(path)
            voiced = np.flatnonzero(np.abs(clip) > degrade.QUIET_RMS)
            if voiced.size:
                parts += [clip[voiced[0] : voiced[-1] + 1], gap]
    if not parts:
        raise DecodeError(f"{cache_dir}: no cached speech for {sources}; run `tunetrace train prepare` first")
    return np.concatenate(parts).astype(np.float32)


def refresh_codec_copies(
    pool: AudioPool, cache_dir: Path, codec_tags: list[str], variants: list[str] | None = None
) -> int:
    """Load codec copies that appeared since ``pool`` was loaded (prepare may still be running).

    Returns how many were added. Training is only bit-reproducible when the codec cache was
    complete before it started.
    """
    chosen = _check_variants(variants or [])
    added = 0
    for index, name in enumerate(pool.names):
        source, stem = name.split("/", 1)
        have = len(pool.codec_copies[index])
        existing = _codec_copy_paths(cache_dir, source, stem, codec_tags, chosen)
        if len(existing) > have:
            pool.codec_copies[index] = [np.load(path, mmap_mode="r") for path in existing]
            added += len(existing) - have
    return added
