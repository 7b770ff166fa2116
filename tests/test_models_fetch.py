"""``models fetch``: downloads from a local HTTP server, checksums, atomicity, offline errors."""

from __future__ import annotations

import argparse
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, ClassVar

import pytest

from tests.fixtures.ports import free_loopback_port
from tunetrace.cli.models import add_models_parser, destination, run_models
from tunetrace.encoders import weights
from tunetrace.encoders.weights import (
    MODELS,
    VGGISH_PCA_PARAMS,
    VGGISH_WEIGHTS,
    ModelSpec,
    UrllibDownloader,
    expected_sha256_prefix,
    fetch_model,
)
from tunetrace.errors import DownloadError, ModelError


class _Handler(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    """A local HTTP server on 127.0.0.1 serving ``_Handler.files`` under ``/release/``."""
    handler = type("Handler", (_Handler,), {"files": {}, "requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/release", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _named(stem: str, body: bytes) -> str:
    """A release-style file name carrying the body's SHA-256 prefix."""
    return f"{stem}-{hashlib.sha256(body).hexdigest()[:8]}.pth"


@pytest.fixture
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Registers model ``tiny`` with two generated files; returns name -> content."""
    bodies = [b"weights" * 50_000, b"pca params"]
    stems = ("tiny", "tiny_pca")
    files = {_named(stem, body): body for stem, body in zip(stems, bodies, strict=True)}
    monkeypatch.setitem(MODELS, "tiny", ModelSpec("tiny", "http://invalid.example", tuple(files)))
    return files


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_loopback_port()}/release"


QUIET = UrllibDownloader(progress=False, timeout_s=5)


def test_release_names_carry_hash_prefixes() -> None:
    assert expected_sha256_prefix(VGGISH_WEIGHTS) == "10086976"
    assert expected_sha256_prefix(VGGISH_PCA_PARAMS) == "970ea276"
    assert MODELS["vggish"].files == (VGGISH_WEIGHTS, VGGISH_PCA_PARAMS)
    url = weights.file_url(MODELS["vggish"], VGGISH_WEIGHTS)
    assert url == (
        "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"
    )


def test_fetch_downloads_and_verifies(
    server: tuple[str, type[_Handler]], tiny_model: dict[str, bytes], tmp_path: Path
) -> None:
    base_url, handler = server
    handler.files.update(tiny_model)
    dest = tmp_path / "models" / "tiny"
    paths = fetch_model("tiny", dest, base_url=base_url, downloader=QUIET)
    assert [p.name for p in paths] == list(tiny_model)
    assert all(p.read_bytes() == tiny_model[p.name] for p in paths)
    assert sorted(p.name for p in dest.iterdir()) == sorted(tiny_model)  # no .part left behind

    handler.requests.clear()
    fetch_model("tiny", dest, base_url=base_url, downloader=QUIET)
    assert handler.requests == []  # verified files are kept, not downloaded again


def test_corrupt_existing_file_is_replaced(
    server: tuple[str, type[_Handler]], tiny_model: dict[str, bytes], tmp_path: Path
) -> None:
    base_url, handler = server
    handler.files.update(tiny_model)
    name = next(iter(tiny_model))
    (tmp_path / name).write_bytes(b"truncated")
    fetch_model("tiny", tmp_path, base_url=base_url, downloader=QUIET)
    assert (tmp_path / name).read_bytes() == tiny_model[name]


def test_checksum_mismatch_is_rejected_and_leaves_nothing(
    server: tuple[str, type[_Handler]], tmp_path: Path
) -> None:
    base_url, handler = server
    handler.files[VGGISH_WEIGHTS] = b"not the published weights"
    with pytest.raises(ModelError, match="checksum mismatch") as caught:
        fetch_model("vggish", tmp_path, base_url=base_url, downloader=QUIET)
    assert not isinstance(caught.value, DownloadError)
    assert "expected prefix 10086976" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_leaves_no_partial_file(
    tiny_model: dict[str, bytes], tmp_path: Path
) -> None:
    def dies_midway(url: str, sink: BinaryIO) -> None:
        sink.write(b"half a file")
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(DownloadError, match="connection reset"):
        fetch_model("tiny", tmp_path, downloader=dies_midway)
    assert list(tmp_path.iterdir()) == []


def test_injected_downloader_is_used(tiny_model: dict[str, bytes], tmp_path: Path) -> None:
    seen: list[str] = []

    def fake(url: str, sink: BinaryIO) -> None:
        seen.append(url)
        sink.write(tiny_model[url.rsplit("/", 1)[-1]])

    fetch_model("tiny", tmp_path, base_url="https://mirror.example/m/", downloader=fake)
    assert seen == [f"https://mirror.example/m/{name}" for name in tiny_model]


def test_offline_error_names_file_url_and_destination(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "vggish"
    with pytest.raises(DownloadError) as caught:
        fetch_model("vggish", dest, base_url=_closed_port_url(), downloader=QUIET)
    message = str(caught.value)
    assert f"could not download {VGGISH_WEIGHTS}" in message
    assert str(dest / VGGISH_WEIGHTS) in message
    assert list(dest.iterdir()) == []


def test_http_error_is_download_error(server: tuple[str, type[_Handler]], tmp_path: Path) -> None:
    base_url, _ = server
    with pytest.raises(DownloadError, match="Not Found"):
        fetch_model("vggish", tmp_path, base_url=base_url, downloader=QUIET)


def test_unknown_model_and_bad_scheme(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"unknown model 'yamnet'.*vggish"):
        fetch_model("yamnet", tmp_path)
    with pytest.raises(ModelError, match="only http"):
        fetch_model("vggish", tmp_path, base_url="file:///etc", downloader=QUIET)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tunetrace")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_fetch_writes_into_configured_data_dir(
    server: tuple[str, type[_Handler]], tiny_model: dict[str, bytes], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_url, handler = server
    handler.files.update(tiny_model)
    config = tmp_path / "tunetrace.yaml"
    config.write_text(f"data_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    args = _parse(["models", "fetch", "tiny", "-c", str(config), "--base-url", base_url,
                   "--no-progress"])
    assert args.func(args) == 0
    dest = tmp_path / "state" / "models" / "tiny"
    assert capsys.readouterr().out.split() == [str(dest / name) for name in tiny_model]
    assert sorted(p.name for p in dest.iterdir()) == sorted(tiny_model)


def test_cli_destination_follows_encoder_model_path(tmp_path: Path) -> None:
    config = tmp_path / "tunetrace.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\nencoder:\n  name: vggish\n  model_path: {tmp_path / 'w'}\n",
        encoding="utf-8",
    )
    assert destination(_parse(["models", "fetch", "vggish", "-c", str(config)])) == tmp_path / "w"
    override = _parse(["models", "fetch", "vggish", "-c", str(config), "--dest", "/x"])
    assert destination(override) == Path("/x")


def test_cli_offline_exits_unavailable_with_instructions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "weights"
    args = _parse(["models", "fetch", "vggish", "--dest", str(dest),
                   "--base-url", _closed_port_url(), "--no-progress"])
    assert run_models(args) == 69
    err = capsys.readouterr().err
    assert f"place the file at {dest / VGGISH_WEIGHTS}" in err
    for name in (VGGISH_WEIGHTS, VGGISH_PCA_PARAMS):  # the hint lists every file of the model
        assert f"/{name}  ->  {dest / name}" in err
