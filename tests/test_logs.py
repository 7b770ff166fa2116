"""Log lines: each names its station, a source that comes back says so once, journald priorities
when stderr is the journal, JSON lines on request, and no credential or stream URL in any line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from tests.fakes import FakeCatalog
from tests.fixtures.ports import free_loopback_port
from tests.test_sources import ScriptedSource, params, take
from tunetrace.config import parse_config
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.observe.logs import configure_logging, station_scope, stderr_is_journal
from tunetrace.pipeline import SharedModel
from tunetrace.publish.base import LogSink
from tunetrace.service import Service
from tunetrace.sources import SourceRunner

SECRET = "pw-Lg7-s3cret"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """These tests replace the root handler; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def journal_env(path: Path) -> dict[str, str]:
    info = path.stat()
    return {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}


def test_journald_priorities_only_when_stderr_is_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        assert stderr_is_journal(stream, journal_env(path))
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not stderr_is_journal(stream, {})
        configure_logging("DEBUG", stream=stream, environ=journal_env(path))
        log = logging.getLogger("tunetrace.test")
        with station_scope("radio-one"):
            log.debug("d")
            log.info("i")
            log.warning("w")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("e")
        log.critical("c")
    lines = path.read_text().splitlines()
    assert lines[:3] == ["<7>DEBUG tunetrace.test: [radio-one] d", "<6>INFO tunetrace.test: [radio-one] i",
                         "<4>WARNING tunetrace.test: [radio-one] w"]
    assert lines[3] == "<3>ERROR tunetrace.test: e"
    traceback = lines[4:-1]
    assert traceback and all(line.startswith("<3>") for line in traceback), "a traceback keeps its priority"
    assert lines[-1] == "<2>CRITICAL tunetrace.test: c"


def test_plain_text_has_timestamps_and_no_priorities_off_the_journal() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, environ={"JOURNAL_STREAM": "1:2"})
    with station_scope("jazz"):
        logging.getLogger("tunetrace.test").info("hello")
    line = stream.getvalue().strip()
    assert not line.startswith("<") and line.endswith("INFO tunetrace.test: [jazz] hello")
    assert line[:4].isdigit(), "starts with the date"


def test_json_lines_carry_the_station_and_the_exception(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream, environ={})
    log = logging.getLogger("tunetrace.test")
    with station_scope("radio-one"):
        log.info("now playing %r", "Song")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["station"] == "radio-one" and first["message"] == "now playing 'Song'"
    assert first["level"] == "INFO" and first["logger"] == "tunetrace.test"
    assert first["time"].endswith("+00:00")
    assert second["station"] is None and "ValueError: bad" in second["exception"]

    path = tmp_path / "journal"
    with path.open("w") as journal:
        configure_logging("INFO", "json", stream=journal, environ=journal_env(path))
        log.warning("w")
    line = path.read_text().strip()
    assert line.startswith("<4>{") and json.loads(line[3:])["level"] == "WARNING"


def test_credentials_in_urls_never_reach_a_log_line() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, environ={})
    logging.getLogger("x").warning("cannot open http://dj:%s@radio.example:8000/live.mp3", SECRET)
    configure_logging("INFO", "json", stream=stream, environ={})
    logging.getLogger("x").warning("rtsp://admin:%s@cam/stream failed", SECRET)
    text = stream.getvalue()
    assert SECRET not in text
    assert "http://***@radio.example:8000/live.mp3" in text and "rtsp://***@cam/stream" in text


def test_a_source_that_comes_back_says_so_once_and_each_outage_warns_once() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, environ={})
    block = np.full(800, 0.1, np.float32)
    source = ScriptedSource([[block], "fail", "fail", "fail", [block], "fail", [block, block]])

    async def scenario() -> None:
        with station_scope("radio-one"):
            await take(SourceRunner(source, params()), 4)

    asyncio.run(scenario())
    lines = stream.getvalue().splitlines()
    warnings = [line for line in lines if " WARNING " in line]
    back = [line for line in lines if "source is back" in line]
    assert len(warnings) == 2, lines  # two outages
    # Each outage began with a clean end of stream; the refused reconnects in between are debug lines.
    assert all(w.endswith("[radio-one] stream ended; reconnecting with backoff") for w in warnings)
    assert len(back) == 2 and "(4 reconnect attempt(s))" in back[0] and "(2 reconnect attempt(s))" in back[1]
    assert all("[radio-one]" in line for line in lines)


async def not_found_server() -> tuple[web.AppRunner, int]:
    """An HTTP server answering 404 to everything: ffmpeg gives up on it at once."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    port = free_loopback_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def test_a_failing_stream_logs_its_station_never_its_url_or_password(tmp_path: Path) -> None:
    """The real service and ffmpeg against a stream URL with credentials that answers 404."""
    path = tmp_path / "stderr"
    catalog = FakeCatalog()

    async def scenario() -> str:
        http, port = await not_found_server()
        url = f"http://dj:{SECRET}@127.0.0.1:{port}/live.mp3"
        config = parse_config({
            "data_dir": str(tmp_path), "encoder": {"name": "spectral"},
            "stations": [{"name": "dead-fm",
                          "source": {"url": url, "reconnect_initial_s": 0.3, "reconnect_max_s": 0.3}}],
        })
        model = SharedModel(SpectralEncoder(), catalog, catalog.shape)
        service = Service(config, sinks=[LogSink()], model=model)
        task = asyncio.create_task(service.run())
        await asyncio.sleep(3.0)
        service.request_stop()
        async with asyncio.timeout(15):
            await task
        await http.cleanup()
        return url

    with path.open("w") as stream:
        configure_logging("INFO", "json", stream=stream, environ=journal_env(path))
        url = asyncio.run(scenario())
    lines = path.read_text().splitlines()
    entries = [json.loads(line[3:]) for line in lines]
    failures = [e for e in entries if e["message"].startswith("source failed")]
    assert len(failures) == 1, entries  # one warning per outage, repeats are debug
    assert failures[0]["station"] == "dead-fm" and lines[entries.index(failures[0])].startswith("<4>")
    text = path.read_text()
    assert "404 Not Found" in failures[0]["message"], failures
    assert SECRET not in text and url.split("@")[1] not in text, text
