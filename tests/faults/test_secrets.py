"""Secrets stay secret: not in logs, errors, ``check-config`` output, nor a child's command line.

The stream tests run the real ``FfmpegSource`` (a real ffmpeg) against a real HTTP server on
loopback that demands credentials (HTTP basic auth, or a ``?token=`` query), and read the child's
``/proc/<pid>/cmdline`` while it streams: what ``ps`` shows every user of the machine.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.faults.cli import run_tunetrace
from tests.fixtures.audio import run_ffmpeg, synthetic_music, write_wav
from tests.fixtures.milvus import BuiltCatalog, private_catalog_copy
from tests.fixtures.mqtt import Mosquitto
from tests.fixtures.ports import free_loopback_port
from tests.fixtures.processes import descendants, processes
from tunetrace.errors import SourceError
from tunetrace.redact import redact_text, redact_url, url_has_secrets
from tunetrace.sources.ffmpeg import FfmpegSource

RATE = 16000
USER, PASSWORD, TOKEN = "listener", "pw-Quux7731", "tok-Zyx9981"
SECRETS = (PASSWORD, TOKEN)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pw@host:8000/live.mp3", "http://***@host:8000/live.mp3"),
    ("https://host/live?token=abc&bitrate=128", "https://host/live?token=***&bitrate=128"),
    ("http://h/s?api_key=1&X-Amz-Signature=2&q=3", "http://h/s?api_key=***&X-Amz-Signature=***&q=3"),
    ("http://root:Milvus@milvus:19530", "http://***@milvus:19530"),
    ("rtsp://cam:secret@10.0.0.2/audio", "rtsp://***@10.0.0.2/audio"),
    ("http://radio.example/live.mp3?bitrate=128", "http://radio.example/live.mp3?bitrate=128"),
    ("/var/lib/tunetrace/catalog.db", "/var/lib/tunetrace/catalog.db"),
    ("http://u:p@[::1", "http://***"),
])
def test_redact_url_hides_userinfo_and_credential_parameters(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert url_has_secrets(url) == (url != shown)


def test_redact_text_hides_urls_inside_messages_and_literal_secrets() -> None:
    text = "Impossible to open 'http://u:pw@h/x.mp3?token=t1' (Server returned 401); key s3cr3t"
    redacted = redact_text(text, ("s3cr3t",))
    assert redacted == "Impossible to open 'http://***@h/x.mp3?token=***' (Server returned 401); key ***"


class _AuthHandler(http.server.BaseHTTPRequestHandler):
    """Serves one mp3 to a client with the right basic auth or token; 401 otherwise."""

    body = b""

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected and f"token={TOKEN}" not in self.path:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="radio"')
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.end_headers()
        # Slowly, like a live stream, so the child is still running while its cmdline is read.
        for start in range(0, len(self.body), 4000):
            try:
                self.wfile.write(self.body[start : start + 4000])
                self.wfile.flush()
            except OSError:
                return
            threading.Event().wait(0.05)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def auth_stream(tmp_path: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT``: a real HTTP server that wants credentials, serving 20 s of mp3."""
    wav = write_wav(tmp_path / "music.wav", synthetic_music(20.0, RATE, seed=3), RATE)
    mp3 = tmp_path / "music.mp3"
    run_ffmpeg(["-i", str(wav), "-c:a", "libmp3lame", "-b:a", "64k", str(mp3)])
    handler = type("Handler", (_AuthHandler,), {"body": mp3.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_loopback_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def _first_blocks_and_cmdlines(url: str) -> tuple[list[np.ndarray], list[str]]:
    source = FfmpegSource(url, RATE)
    blocks: list[np.ndarray] = []
    cmdlines: list[str] = []
    session = source.session()
    try:
        async with asyncio.timeout(20):
            async for block in session:
                blocks.append(block)
                if len(blocks) == 4:
                    children = [p.cmdline for p in processes() if p.ppid == os.getpid()]
                    cmdlines = [c for c in children if "ffmpeg" in c]
                    break
    finally:
        await session.aclose()
    return blocks, cmdlines


@pytest.mark.parametrize("form", ["userinfo", "token"])
def test_stream_credentials_reach_the_server_but_not_the_process_list(auth_stream: str, form: str) -> None:
    host = auth_stream.removeprefix("http://")
    url = (f"http://{USER}:{PASSWORD}@{host}/live.mp3" if form == "userinfo"
           else f"{auth_stream}/live.mp3?token={TOKEN}")
    blocks, cmdlines = asyncio.run(_first_blocks_and_cmdlines(url))
    audio = np.concatenate(blocks)
    assert audio.size == 4 * RATE // 4 and float(np.abs(audio).max()) > 0.05, "authenticated audio arrived"
    assert len(cmdlines) == 1, cmdlines
    assert "pipe:0" in cmdlines[0]
    assert not any(secret in cmdlines[0] for secret in SECRETS), cmdlines[0]
    assert host not in cmdlines[0], "no URL at all on the command line"
    assert "***" in FfmpegSource(url, RATE).description
    assert not any(secret in FfmpegSource(url, RATE).description for secret in SECRETS)


def test_a_refused_stream_reports_the_cause_without_the_credentials(
    auth_stream: str, caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"{auth_stream}/live.mp3?token=wrong-{TOKEN}"

    async def open_once() -> None:
        async for _ in FfmpegSource(url, RATE).session():
            pass

    with caplog.at_level(logging.DEBUG, logger="tunetrace"), pytest.raises(SourceError) as raised:
        asyncio.run(open_once())
    assert "401" in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert caplog.records, "ffmpeg's stderr is logged at DEBUG"
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


def test_check_config_and_catalog_errors_print_no_credentials(tmp_path: Path) -> None:
    port = free_loopback_port()  # nothing listens there: the connection error path
    config = tmp_path / "tunetrace.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "encoder: {name: spectral}\n"
        f"milvus: {{uri: 'http://root:{PASSWORD}@127.0.0.1:{port}?token={TOKEN}',\n"
        "         token: '${MILVUS_TOKEN}', timeout_s: 1}\n"
        f"stations: [{{name: one, source: {{url: 'http://{USER}:{PASSWORD}@radio.example/live?token={TOKEN}'"
        "}}]\n"
        f"mqtt: {{username: {USER}, password: '${{MQTT_PASSWORD}}'}}\n"
    )
    env = {"MILVUS_TOKEN": f"root:{TOKEN}", "MQTT_PASSWORD": PASSWORD}
    checked = run_tunetrace("check-config", "--config", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    assert "http://***@127.0.0.1" in checked.stdout
    clip = write_wav(tmp_path / "q.wav", synthetic_music(3.0, RATE, seed=1), RATE)
    identified = run_tunetrace("identify", "--config", str(config), str(clip), env=env)
    assert identified.returncode == 69, identified.stderr
    assert "cannot connect to Milvus at http://***@127.0.0.1" in identified.stderr
    for output in (checked.stdout, checked.stderr, identified.stdout, identified.stderr):
        assert not any(secret in output for secret in SECRETS), output


@pytest.mark.slow
def test_a_daemon_run_with_credentials_in_every_url_prints_none_of_them(
    tmp_path: Path, auth_stream: str, mosquitto: Mosquitto, clip_catalog: BuiltCatalog,
) -> None:
    """``serve`` at DEBUG with secrets in the station URLs (userinfo and query), the MQTT password
    and a Milvus token: grep everything it wrote, and every command line of its process tree."""
    host = auth_stream.removeprefix("http://")
    state = private_catalog_copy(clip_catalog, tmp_path / "state")
    config = tmp_path / "serve.yaml"
    config.write_text(
        f"data_dir: {state}\n"
        "log_level: DEBUG\n"
        "milvus: {token: '${MILVUS_TOKEN}'}\n"
        "stations:\n"
        f"  - {{name: good, source: {{url: 'http://{USER}:{PASSWORD}@{host}/live.mp3?token={TOKEN}',\n"
        "      reconnect_initial_s: 0.5, reconnect_max_s: 1}}\n"
        f"  - {{name: refused, source: {{url: 'http://{USER}:x{PASSWORD}@{host}/live.mp3?api_key=x{TOKEN}',\n"
        "      reconnect_initial_s: 0.5, reconnect_max_s: 1}}\n"
        f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.password_port}, username: {mosquitto.username},\n"
        "       password: '${MQTT_PASSWORD}', reconnect_initial_s: 0.5}\n",
        encoding="utf-8",
    )
    secrets = (*SECRETS, mosquitto.password)
    env = {**os.environ, "MILVUS_TOKEN": f"root:{TOKEN}", "MQTT_PASSWORD": mosquitto.password}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tunetrace", "serve", "-v", "-c", str(config)],
            stdout=stdout, stderr=stderr, env=env,
        )
        seen: dict[int, str] = {}
        try:
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                seen |= descendants(daemon.pid)
                if "reconnect 3" in err.read_text(errors="replace"):
                    break
                time.sleep(0.2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            status = daemon.wait(timeout=30)
    log_text = err.read_text(errors="replace") + out.read_text(errors="replace")
    assert status == 0, log_text[-3000:]
    ffmpeg_lines = [c for c in seen.values() if "ffmpeg" in c]
    assert ffmpeg_lines and all("pipe:0" in c for c in ffmpeg_lines), ffmpeg_lines
    assert "MQTT connected" in log_text
    assert "401" in log_text and "reconnect 3" in log_text, "the refused station kept reconnecting"
    # Source lines name the station, not its URL (docs/metrics.md, logs): neither URL appears.
    reconnects = [line for line in log_text.splitlines() if "reconnect 1 in" in line]
    assert reconnects and all("refused" in line or "good" in line for line in reconnects), reconnects
    assert not [line for line in log_text.splitlines() if f"{host}/live.mp3" in line and "***" not in line]
    written = [log_text, *seen.values()]
    written += [p.read_text(errors="replace") for p in state.glob("plays.jsonl*")]
    leaks = [(secret, text[max(0, text.find(secret) - 80):][:200]) for text in written
             for secret in secrets if secret in text]
    assert leaks == []
