"""Training/validation audio: decoded once into an 8 kHz mono float32 ``.npy`` cache.

Sources are Debian game soundtracks (real, freely licensed music). Two of them ship as ``.pk3``
zip archives, so their ``.ogg`` members are extracted to a temporary file and decoded with the
package's own ffmpeg decoder. Lossy-codec copies (MP3/AAC) are made once from the cache, because
encoding on the fly would cost more CPU than training itself; each copy is re-aligned to the clean
track by cross-correlation so a clean/augmented pair stays sample-aligned.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunetrace.audio.decode import _tool, decode_file
from tunetrace.errors import DecodeError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".ogg", ".opus", ".mp3", ".flac", ".wav")
MAX_ALIGN_LAG_SAMPLES = 4000


@dataclass(frozen=True)
class SourceSpec:
    """One corpus: a folder (searched recursively) or a zip archive of audio files."""

    name: str
    path: Path


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


def iter_source_files(source: SourceSpec) -> Iterator[tuple[str, Path]]:
    """Yield (track name, path to a readable audio file) for every track of ``source``.

    Zip members are extracted to a temporary file that lives until the caller asks for the next.
    """
    if source.path.is_dir():
        for path in sorted(source.path.rglob("*")):
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
                yield _safe_name(str(path.relative_to(source.path).with_suffix(""))), path
        return
    if not zipfile.is_zipfile(source.path):
        raise DecodeError(f"{source.path}: neither a folder nor a zip archive of audio")
    with zipfile.ZipFile(source.path) as archive, tempfile.TemporaryDirectory() as tmp:
        for member in sorted(archive.namelist()):
            suffix = Path(member).suffix.lower()
            if suffix not in AUDIO_SUFFIXES:
                continue
            target = Path(tmp) / f"track{suffix}"
            target.write_bytes(archive.read(member))
            yield _safe_name(str(Path(member).with_suffix(""))), target


def prepare_source(source: SourceSpec, cache_dir: Path, sample_rate: int, min_s: float = 4.0) -> list[Path]:
    """Decode every track of ``source`` into ``cache_dir/<source>/<track>.npy`` (skipping done ones)."""
    out_dir = cache_dir / source.name
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, path in iter_source_files(source):
        target = out_dir / f"{name}.npy"
        if not target.exists():
            try:
                audio = decode_file(path, sample_rate)
            except DecodeError as exc:
                log.warning("skipping %s: %s", name, exc)
                continue
            if audio.size < min_s * sample_rate:
                log.info("skipping %s: shorter than %.0f s", name, min_s)
                continue
            tmp = target.with_suffix(".tmp.npy")
            np.save(tmp, audio.astype(np.float32))
            tmp.replace(target)
            log.info("%s/%s: %.1f s", source.name, name, audio.size / sample_rate)
        written.append(target)
    return written


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
    for track in tracks:
        target = cache_dir / "codec" / codec.tag / track.parent.name / track.name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        audio = np.load(track)
        try:
            copy = codec_roundtrip(audio, sample_rate, codec)
        except DecodeError as exc:
            log.warning("%s: %s", track, exc)
            continue
        tmp = target.with_suffix(".tmp.npy")
        np.save(tmp, copy)
        tmp.replace(target)
        log.info("codec %s: %s", codec.tag, track.name)


@dataclass
class AudioPool:
    """Cached tracks in memory plus, per track, the lossy copies that exist."""

    names: list[str]
    tracks: list[np.ndarray]
    codec_copies: list[list[np.ndarray]]

    @property
    def total_samples(self) -> int:
        return sum(t.size for t in self.tracks)


def load_pool(cache_dir: Path, sources: list[str], codec_tags: list[str] | None = None) -> AudioPool:
    """Load every cached track of ``sources`` (and the codec copies found for them)."""
    names: list[str] = []
    tracks: list[np.ndarray] = []
    copies: list[list[np.ndarray]] = []
    for source in sources:
        for path in sorted((cache_dir / source).glob("*.npy")):
            if path.name.endswith(".tmp.npy"):
                continue
            audio = np.load(path, mmap_mode=None)
            names.append(f"{source}/{path.stem}")
            tracks.append(audio)
            found = []
            for tag in codec_tags or []:
                copy_path = cache_dir / "codec" / tag / source / path.name
                if copy_path.exists():
                    found.append(np.load(copy_path))
            copies.append(found)
    if not tracks:
        raise DecodeError(f"{cache_dir}: no cached tracks for {sources}; run `tunetrace train prepare` first")
    return AudioPool(names, tracks, copies)


def refresh_codec_copies(pool: AudioPool, cache_dir: Path, codec_tags: list[str]) -> int:
    """Load codec copies that appeared since ``pool`` was loaded (prepare may still be running).

    Returns how many were added. Training is only bit-reproducible when the codec cache was
    complete before it started.
    """
    added = 0
    for index, name in enumerate(pool.names):
        source, stem = name.split("/", 1)
        have = len(pool.codec_copies[index])
        found = [cache_dir / "codec" / tag / source / f"{stem}.npy" for tag in codec_tags]
        existing = [path for path in found if path.exists()]
        if len(existing) > have:
            pool.codec_copies[index] = [np.load(path) for path in existing]
            added += len(existing) - have
    return added
