"""The HTTP server with a real client: API, /healthz, /metrics, token auth, and the status page in a
real headless Chromium, against the real service (ffmpeg source, spectral encoder, in-memory catalog)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeCatalog, fake_track
from tests.fixtures.audio import synthetic_music, write_wav
from tests.fixtures.mqtt import make_event
from tests.fixtures.ports import free_loopback_port
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.config import Config, HttpConfig, parse_config
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.errors import ConfigError
from tunetrace.events import Play, PlayEvent, StationHealth
from tunetrace.observe.base import StationStatus
from tunetrace.observe.http import HttpServer
from tunetrace.observe.metrics import CONTENT_TYPE, PrometheusMetrics
from tunetrace.pipeline import SharedModel
from tunetrace.publish.base import LogSink
from tunetrace.publish.playlog import PlayLog, PlayLogReader
from tunetrace.service import Service

WAIT_S = 30.0
TOKEN = "tok-Hq2-s3cret"  # distinctive, so tests can look for it in logs
TRACK_TITLE = "Zebra Crossing Theme"
_T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# -- the server alone, over fakes that implement its Protocols ------------------------------------


@dataclass
class StaticStatus:
    """``StatusSource`` with fixed stations."""

    items: list[StationStatus]

    def stations(self) -> list[StationStatus]:
        return self.items


def healthy(**overrides: Any) -> StationHealth:
    values: dict[str, Any] = {"source_up": True, "silent": False, "dropped_windows": 2,
                              "windows_processed": 1200, "last_audio_at": _T0, "reconnects": 1}
    return StationHealth(**(values | overrides))


def status(name: str, health: StationHealth | None, *, progressing: bool = True,
           now: Play | None = None, recent: tuple[Play, ...] = ()) -> StationStatus:
    return StationStatus(name, name.upper(), health, progressing, now, recent)


@asynccontextmanager
async def serving(server_status: StaticStatus, reader: PlayLogReader, *,
                  token: str | None = None) -> AsyncIterator[str]:
    config = HttpConfig(listen=f"127.0.0.1:{free_loopback_port()}", token=token)
    server = HttpServer(config, server_status, reader, PrometheusMetrics(), metrics_content_type=CONTENT_TYPE)
    await server.start()
    task = asyncio.create_task(server.serve())
    try:
        yield f"http://{config.listen}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def get(url: str, **headers: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(
        url, headers=headers, timeout=aiohttp.ClientTimeout(total=10),
    ) as response:
        return response.status, await response.text(), dict(response.headers)


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(120):
            return await coro

    return asyncio.run(bounded())


async def write_plays(path: Path, events: list[PlayEvent]) -> None:
    log = PlayLog(path, max_bytes=10_000_000, backups=2)
    for event in events:
        await log.publish_event(event)
    await log.close(1.0)


def test_api_stations_shows_state_now_playing_and_recent_plays(tmp_path: Path) -> None:
    playing = make_event("radio-one", 2).play
    ended = make_event("radio-one", 1, "play_ended").play
    board = StaticStatus([
        status("radio-one", healthy(), now=playing, recent=(playing, ended)),
        status("jazz", healthy(source_up=False)),
        status("new", None),
    ])

    async def scenario() -> tuple[int, Any]:
        async with serving(board, PlayLogReader(tmp_path / "plays.jsonl", 0)) as base:
            code, body, _ = await get(f"{base}/api/stations")
            return code, json.loads(body)

    code, body = run(scenario())
    assert code == 200
    one, jazz, new = body["stations"]
    assert (one["name"], one["display_name"], one["state"]) == ("radio-one", "RADIO-ONE", "ok")
    assert one["now_playing"]["title"] == playing.title
    assert [p["play_id"] for p in one["recent_plays"]] == [playing.play_id, ended.play_id]
    assert (one["windows_processed"], one["dropped_windows"], one["reconnects"]) == (1200, 2, 1)
    assert jazz["state"] == "down" and jazz["now_playing"] is None
    assert new["state"] == "starting"


def test_api_plays_filters_the_play_log_by_station_and_time(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    events = [make_event("radio-one", i) for i in range(4)]  # started 4 minutes apart
    events += [make_event("radio-one", i, "play_ended") for i in range(3)]  # index 3 still open
    events += [make_event("jazz", 1), make_event("jazz", 1, "play_ended")]
    run(write_plays(path, events))
    board = StaticStatus([])

    async def scenario() -> dict[str, Any]:
        answers: dict[str, Any] = {}
        async with serving(board, PlayLogReader(path, 2)) as base:
            for name, query in {
                "all": "", "one": "?station=radio-one",
                "span": "?station=radio-one&from=2026-03-01T12:05:00Z&to=2026-03-01T12:09:00Z",
                "open": "?station=radio-one&from=2026-03-01T13:00:00+00:00",
                "bad": "?from=yesterday", "reversed": "?from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
            }.items():
                code, body, _ = await get(f"{base}/api/plays{query}")
                answers[name] = (code, json.loads(body) if code == 200 else body)
        return answers

    answers = run(scenario())
    assert answers["all"][0] == 200 and len(answers["all"][1]["plays"]) == 5
    one = answers["one"][1]["plays"]
    assert [p["play_id"] for p in one] == [f"radio-one-{i:05d}" for i in range(4)]
    assert [p["ended_at"] is not None for p in one] == [True, True, True, False], "ended supersedes started"
    # 12:05-12:09 overlaps play 1 (12:04-12:07:20) and play 2 (12:08-12:11:20), not 0 or 3 (12:12).
    assert [p["play_id"] for p in answers["span"][1]["plays"]] == ["radio-one-00001", "radio-one-00002"]
    assert [p["play_id"] for p in answers["open"][1]["plays"]] == ["radio-one-00003"]
    assert answers["bad"][0] == 400 and "from='yesterday' is not an ISO 8601 time" in answers["bad"][1]
    assert answers["reversed"][0] == 400


def test_play_log_reader_reads_rotated_backups_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"

    async def scenario() -> None:
        log = PlayLog(path, max_bytes=10_000, backups=5)  # ~450 bytes a line: rotates every ~22 events
        for i in range(80):
            await log.publish_event(make_event("radio-one", i))
        await log.close(1.0)

    run(scenario())
    assert (tmp_path / "plays.jsonl.2").exists()
    plays = PlayLogReader(path, 5).plays("radio-one", None, None)
    assert [p.play_id for p in plays] == [f"radio-one-{i:05d}" for i in range(80)]
    original = make_event("radio-one", 0).play
    assert plays[0] == replace(original, confidence=round(original.confidence, 3)), "JSON round trip"


def test_healthz_is_200_only_while_every_station_progresses_and_the_catalog_answers(tmp_path: Path) -> None:
    board = StaticStatus([status("radio-one", healthy()), status("jazz", healthy())])

    async def scenario() -> list[tuple[int, Any]]:
        codes = []
        async with serving(board, PlayLogReader(tmp_path / "p.jsonl", 0)) as base:
            for items in (
                [status("radio-one", healthy()), status("jazz", healthy())],
                [status("radio-one", healthy()), status("jazz", healthy(source_up=False), progressing=False)],
                [status("radio-one", healthy(catalog_up=False)), status("jazz", healthy())],
            ):
                board.items = items
                code, body, _ = await get(f"{base}/healthz")
                codes.append((code, json.loads(body)))
        return codes

    ok, stalled, catalog = run(scenario())
    assert ok == (200, {"healthy": True, "problems": []})
    assert stalled[0] == 503
    assert stalled[1]["problems"] == ["jazz: no pipeline progress within http.progress_timeout_s"]
    assert catalog[0] == 503 and catalog[1]["problems"] == ["radio-one: the catalog does not answer searches"]


def test_token_guards_everything_but_healthz(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    board = StaticStatus([status("radio-one", healthy())])

    async def scenario() -> dict[str, int]:
        codes: dict[str, int] = {}
        async with serving(board, PlayLogReader(tmp_path / "p.jsonl", 0), token=TOKEN) as base:
            for path in ("/", "/api/stations", "/api/plays", "/metrics"):
                codes[f"none {path}"] = (await get(f"{base}{path}"))[0]
                codes[f"wrong {path}"] = (await get(f"{base}{path}", Authorization="Bearer nope"))[0]
                codes[f"right {path}"] = (await get(f"{base}{path}", Authorization=f"Bearer {TOKEN}"))[0]
            codes["query"] = (await get(f"{base}/api/stations?access_token={TOKEN}"))[0]
            codes["healthz"] = (await get(f"{base}/healthz"))[0]
            _, _, headers = await get(f"{base}/api/stations")
            codes["challenge"] = int(headers.get("WWW-Authenticate", "").startswith("Bearer"))
        return codes

    with caplog.at_level("DEBUG"):
        codes = run(scenario())
    for path in ("/", "/api/stations", "/api/plays", "/metrics"):
        answers = (codes[f"none {path}"], codes[f"wrong {path}"], codes[f"right {path}"])
        assert answers == (401, 401, 200), path
    assert codes["query"] == 200 and codes["healthz"] == 200 and codes["challenge"] == 1
    assert TOKEN not in caplog.text


def test_a_taken_port_is_a_clear_config_error(tmp_path: Path) -> None:
    async def scenario() -> str:
        port = free_loopback_port()
        board = StaticStatus([])
        reader = PlayLogReader(tmp_path / "p", 0)
        config = HttpConfig(listen=f"127.0.0.1:{port}")
        first = HttpServer(config, board, reader, PrometheusMetrics(), metrics_content_type=CONTENT_TYPE)
        await first.start()
        try:
            second = HttpServer(config, board, reader, PrometheusMetrics(), metrics_content_type=CONTENT_TYPE)
            with pytest.raises(ConfigError) as caught:
                await second.start()
            return str(caught.value)
        finally:
            await first.close()

    message = run(scenario())
    assert message.startswith("http.listen: cannot listen on 127.0.0.1:") and "choose a free port" in message


@pytest.mark.parametrize(("listen", "ok"), [
    ("127.0.0.1:8080", True), ("[::1]:9000", True), ("0.0.0.0:80", True), ("localhost:8080", True),
    ("8080", False), ("127.0.0.1:0", False), ("127.0.0.1:99999", False), ("http://x:1", False),
])
def test_http_listen_is_validated_with_the_key_named(listen: str, ok: bool) -> None:
    if ok:
        assert parse_config({"http": {"listen": listen}}).http is not None
    else:
        with pytest.raises(ConfigError, match=r"http: .*listen must be host:port"):
            parse_config({"http": {"listen": listen}})


# -- the real service: ffmpeg source, spectral encoder, an in-memory catalog holding the track ------


@dataclass
class LiveService:
    base: str
    service: Service
    catalog: FakeCatalog


def catalog_with(audio: Any, encoder: SpectralEncoder, track_id: int, title: str) -> FakeCatalog:
    info = encoder.info
    windows, starts = frame(audio, WindowSpec(info.sample_rate, info.window_s, info.hop_s))
    catalog = FakeCatalog()
    track = fake_track(track_id, title, len(starts), len(audio) / info.sample_rate)
    catalog.add_track(track, encoder.embed(windows), starts / info.sample_rate)
    return catalog


@asynccontextmanager
async def live_service(tmp_path: Path, *, token: str | None = None) -> AsyncIterator[LiveService]:
    encoder = SpectralEncoder()
    rate = encoder.info.sample_rate
    music = synthetic_music(30.0, rate, seed=7)
    wav = write_wav(tmp_path / "air.wav", music, rate)
    catalog = catalog_with(music, encoder, 77, TRACK_TITLE)
    listen = f"127.0.0.1:{free_loopback_port()}"
    http: dict[str, Any] = {"listen": listen} | ({"token": token} if token else {})
    config: Config = parse_config({
        "data_dir": str(tmp_path / "data"), "encoder": {"name": "spectral"}, "http": http,
        "stations": [{"name": "test-fm", "display_name": "Test FM",
                      "source": {"url": str(wav), "realtime": True, "loop": True}}],
    })
    play_log = PlayLog(tmp_path / "plays.jsonl", max_bytes=10**6, backups=1)
    service = Service(config, sinks=[LogSink(), play_log], model=SharedModel(encoder, catalog, catalog.shape))
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(WAIT_S):
            while not await _answers(f"http://{listen}/healthz"):
                if task.done():
                    await task
                await asyncio.sleep(0.1)
        yield LiveService(f"http://{listen}", service, catalog)
    finally:
        service.request_stop()
        async with asyncio.timeout(15):
            await task


async def _answers(url: str) -> bool:
    try:
        await get(url)
    except aiohttp.ClientError:
        return False
    return True


async def wait_for_play(base: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while True:
            code, body, _ = await get(f"{base}/api/stations", **(headers or {}))
            assert code == 200, body
            station = json.loads(body)["stations"][0]
            if station["now_playing"]:
                return station  # type: ignore[no-any-return]
            await asyncio.sleep(0.2)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the Prometheus text format."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def test_the_running_service_serves_its_stations_metrics_and_health(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], str, int, tuple[int, str], str]:
        async with live_service(tmp_path) as live:
            station = await wait_for_play(live.base)
            await asyncio.sleep(1.0)
            _, metrics, headers = await get(f"{live.base}/metrics")
            assert headers["Content-Type"].startswith("text/plain")
            health_ok = (await get(f"{live.base}/healthz"))[0]
            live.catalog.failing = True  # Milvus goes away: searches fail
            async with asyncio.timeout(WAIT_S):
                while (answer := await get(f"{live.base}/healthz"))[0] == 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            _, metrics_down, _ = await get(f"{live.base}/metrics")
            live.catalog.failing = False
            return station, metrics, health_ok, answer[:2], metrics_down

    station, metrics, health_ok, health_down, metrics_down = run(scenario())
    assert station["name"] == "test-fm" and station["display_name"] == "Test FM"
    assert station["state"] == "ok" and station["source_up"]
    assert station["now_playing"]["title"] == TRACK_TITLE
    assert station["recent_plays"][0]["play_id"] == station["now_playing"]["play_id"]
    assert metric(metrics, "tunetrace_station_plays_started_total", station="test-fm") == 1
    assert metric(metrics, "tunetrace_station_audio_seconds_total", station="test-fm") > 2.0
    assert metric(metrics, "tunetrace_station_searches_total", station="test-fm", outcome="ok") >= 3
    assert metric(metrics, "tunetrace_station_search_seconds_count", station="test-fm") >= 3
    assert metric(metrics, "tunetrace_station_confidence", station="test-fm") >= 0.45
    assert metric(metrics, "tunetrace_station_source_state", station="test-fm",
                  tunetrace_station_source_state="ok") == 1
    assert metric(metrics, "tunetrace_station_windows_dropped_total", station="test-fm") >= 0
    assert metric(metrics, "tunetrace_catalog_tracks") == 1
    assert metric(metrics, "tunetrace_embedding_seconds_count") >= 3
    assert health_ok == 200
    assert health_down[0] == 503 and "test-fm: the catalog does not answer searches" in health_down[1]
    assert metric(metrics_down, "tunetrace_station_source_state", station="test-fm",
                  tunetrace_station_source_state="catalog_down") == 1
    assert metric(metrics_down, "tunetrace_station_searches_total", station="test-fm", outcome="error") >= 1
    assert metric(metrics_down, "tunetrace_station_windows_dropped_total", station="test-fm") > 0


def test_status_page_shows_now_playing_in_headless_chromium(tmp_path: Path) -> None:
    """Debian's chromium, headless: the page's script fetched /api/stations and rendered the title."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: scripts/setup --test installs it"

    def browse(url: str, *args: str) -> subprocess.CompletedProcess[str]:
        profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
        return subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-extensions", "--no-first-run",
             "--disable-sync", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
             "--virtual-time-budget=8000", "--window-size=1100,700", *args, url],
            capture_output=True, text=True, timeout=90, check=False,
        )

    screenshot = tmp_path / "status-page.png"

    async def scenario() -> tuple[str, str]:
        async with live_service(tmp_path, token=TOKEN) as live:
            await wait_for_play(live.base, {"Authorization": f"Bearer {TOKEN}"})
            page = f"{live.base}/?access_token={TOKEN}"
            dom = await asyncio.to_thread(browse, page, "--dump-dom")
            shot = await asyncio.to_thread(browse, page, f"--screenshot={screenshot}")
            denied = await asyncio.to_thread(browse, f"{live.base}/", "--dump-dom")
            assert shot.returncode == 0, shot.stderr[-2000:]
            return dom.stdout, denied.stdout

    dom, denied = run(scenario())
    assert TRACK_TITLE in dom, dom[-3000:]
    assert 'data-station="test-fm"' in dom and ">Test FM<" in dom
    assert TRACK_TITLE not in denied, "without the token the page shows nothing"
    assert screenshot.stat().st_size > 5_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A copy for the docs (docs/status-page.png) when asked for: TUNETRACE_SCREENSHOT=<path>.
    keep = os.environ.get("TUNETRACE_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
