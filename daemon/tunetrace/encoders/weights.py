"""Download encoder weights that cannot ship in the wheel (``tunetrace models fetch vggish``).

Files are written atomically (a hidden ``.part`` file in the destination directory, checked, then
renamed), so a crash, a dropped connection or a bad checksum never leaves a truncated file where
an encoder would load it.  Offline machines get an error that names the exact file, its public URL
and the path to place it at, so an operator can copy it over by hand.

Integrity: the torchvggish release files follow the ``torch.hub`` convention of embedding the first
8 hex digits of the file's SHA-256 in its name (``vggish-10086976.pth``).  The full digests are not
published with the release, and this project could not download the files when this module was
written, so only that 8-digit prefix is verified.  It catches truncation and corruption, not a
deliberate forgery; pin full digests in ``ModelSpec`` once a trusted copy has been hashed.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from tunetrace.config import default_data_dir
from tunetrace.errors import DownloadError, ModelError
from tunetrace.hashing import file_sha256

Downloader = Callable[[str, BinaryIO], None]
"""Writes the body of ``url`` into the open binary file; raises ``OSError`` (incl. ``URLError``)."""

TORCHVGGISH_RELEASE = "https://github.com/harritaylor/torchvggish/releases/download/v0.1"
VGGISH_WEIGHTS = "vggish-10086976.pth"
VGGISH_PCA_PARAMS = "vggish_pca_params-970ea276.pth"



_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model: where its files live and what they are called."""

    name: str
    base_url: str
    files: tuple[str, ...]


MODELS: dict[str, ModelSpec] = {
    "vggish": ModelSpec("vggish", TORCHVGGISH_RELEASE, (VGGISH_WEIGHTS, VGGISH_PCA_PARAMS)),
}


def default_model_dir(name: str, data_dir: Path | None = None) -> Path:
    """``<data_dir>/models/<name>``: where ``fetch`` writes and encoders look by default."""
    return (data_dir if data_dir is not None else default_data_dir()) / "models" / name


def expected_sha256_prefix(filename: str) -> str:
    """The hex digest prefix embedded in a release file name (torch.hub naming convention)."""
    match = _HASH_IN_NAME.search(filename)
    if match is None:
        raise ModelError(f"{filename}: name carries no SHA-256 prefix to verify against")
    return match.group(1)


def file_url(spec: ModelSpec, filename: str, base_url: str | None = None) -> str:
    """The URL of one file; ``base_url`` replaces the release location (mirrors, tests)."""
    return f"{(base_url or spec.base_url).rstrip('/')}/{filename}"


def manual_install_hint(name: str, dest_dir: Path, base_url: str | None = None) -> str:
    """What an operator must download and where to put it, for offline machines."""
    spec = _spec(name)
    lines = [f"download these files on a machine with internet access, into {dest_dir}:"]
    lines += [f"  {file_url(spec, f, base_url)}  ->  {dest_dir / f}" for f in spec.files]
    return "\n".join(lines)


class UrllibDownloader:
    """The default downloader: streamed with ``urllib``, with a tqdm progress bar on stderr."""

    def __init__(self, *, timeout_s: float = 60.0, progress: bool = True) -> None:
        self._timeout_s = timeout_s
        self._progress = progress

    def __call__(self, url: str, sink: BinaryIO) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in {"http", "https"}:
            raise ModelError(f"{url}: only http(s) URLs can be fetched")
        request = urllib.request.Request(url, headers={"User-Agent": "tunetrace-models-fetch"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1], file=sys.stderr, disable=not self._progress,
            ) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    sink.write(chunk)
                    bar.update(len(chunk))


def fetch_model(
    name: str,
    dest_dir: Path,
    *,
    base_url: str | None = None,
    downloader: Downloader | None = None,
) -> list[Path]:
    """Download every file of model ``name`` into ``dest_dir``; returns their paths.

    Files already present with a matching checksum are kept (fetching again is cheap and safe).
    Raises ``ModelError`` for an unknown model or a checksum mismatch, and its subclass
    ``DownloadError`` for a failed download, naming the file and where to place it by hand.
    """
    spec = _spec(name)
    fetch = downloader if downloader is not None else UrllibDownloader()
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename in spec.files:
        target = dest_dir / filename
        if not (target.is_file() and _has_expected_hash(target)):
            _download_verified(fetch, file_url(spec, filename, base_url), target)
        paths.append(target)
    return paths


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def _has_expected_hash(path: Path) -> bool:
    return file_sha256(path).startswith(expected_sha256_prefix(path.name))


def _download_verified(fetch: Downloader, url: str, target: Path) -> None:
    """Download to a temporary file beside ``target``, verify, then rename it into place.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic (same
    file system); it is removed on any failure.
    """
    descriptor, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    os.close(descriptor)  # reopened as a buffered file; mkstemp only reserves a unique name
    partial = Path(name)
    try:
        with partial.open("wb") as handle:
            try:
                fetch(url, handle)
            except (OSError, ValueError) as exc:  # URLError/HTTPError/timeouts are OSError
                raise DownloadError(_download_failed(url, target, exc)) from exc
            handle.flush()
            os.fsync(handle.fileno())
        actual = file_sha256(partial)
        expected = expected_sha256_prefix(target.name)
        if not actual.startswith(expected):
            raise ModelError(
                f"{url}: checksum mismatch (sha256 {actual[:16]}..., expected prefix {expected}); "
                f"the download was discarded and {target} was not written"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _download_failed(url: str, target: Path, exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return (
        f"could not download {target.name} from {url} ({reason}). "
        f"If this machine is offline, download that URL elsewhere and place the file at {target}"
    )
