"""Debian packages unpacked for their data, never installed: speech and music for evaluation
(and training) that the machine does not carry by default.

``apt-get download`` fetches the ``.deb`` from the configured Debian mirror and ``dpkg-deb -x``
unpacks it into a cache folder outside the repository; both run with argument lists, and the
package name is checked against Debian's naming rule first, so nothing reaches a shell.

    python -m tunetrace.evaluation.packages fillets-ng-data-nl --cache /var/cache/tunetrace-packages
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tunetrace.errors import TunetraceError

_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
DEFAULT_CACHE = Path("/var/cache/tunetrace-packages")
HELD_OUT_SPEECH = "fillets-ng-data-nl"
"""The speech the evaluation mixes over music (acted Dutch dialogue, ~1.7 h). Training may use the
other speech packages issue 13 names, never this one."""


def unpack(package: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The folder ``package``'s files are unpacked in (downloaded and unpacked once)."""
    if not _PACKAGE_NAME.match(package):
        raise TunetraceError(f"{package!r} is not a Debian package name")
    target = cache_dir / package
    if (target / ".unpacked").exists():
        return target
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise TunetraceError(f"{tool} is not installed: unpacking {package} needs a Debian system")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        download = subprocess.run(
            ["apt-get", "download", package], cwd=tmp, capture_output=True, text=True, check=False,
        )
        debs = sorted(Path(tmp).glob("*.deb"))
        if download.returncode != 0 or not debs:
            reason = (download.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
            raise TunetraceError(f"apt-get download {package} failed: {reason} (run `apt-get update` first?)")
        staging = Path(tmp) / "files"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(staging)], check=True, capture_output=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    (target / ".unpacked").write_text(package + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunetrace.evaluation.packages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", nargs="?", default=HELD_OUT_SPEECH)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    try:
        print(unpack(args.package, args.cache))
    except TunetraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
