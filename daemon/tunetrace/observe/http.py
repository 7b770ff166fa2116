"""The HTTP server: Prometheus metrics, the JSON API, the health endpoint and the status page.

The only aiohttp import. One server, in the daemon's own event loop (a task in the service's
``TaskGroup``), started only when ``http:`` is configured, bound to loopback by default::

    GET /               the status page (static HTML + a script polling /api/stations; no CDN)
    GET /api/stations   every station: state, health counters, now playing, recent plays
    GET /api/plays      ?station=&from=&to= (ISO 8601): plays overlapping that span, oldest first
    GET /healthz        200 when every station progressed recently and the catalog answers; else 503
    GET /metrics        Prometheus text format (docs/metrics.md)

With ``http.token`` set, every path but ``/healthz`` needs ``Authorization: Bearer <token>`` (or
``?access_token=`` for a browser opening the page); the access log is off, so the token never
reaches a log line.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from tunetrace.config import HttpConfig
from tunetrace.errors import ConfigError
from tunetrace.events import Play
from tunetrace.observe.base import StationStatus, StatusSource

log = logging.getLogger(__name__)

_PUBLIC_PATHS = frozenset({"/healthz"})
"""Reachable without the token: Docker's HEALTHCHECK and load balancers carry no credentials."""
_PLUS_AS_SPACE = re.compile(r" (\d{2}:?\d{2})$")
_SHUTDOWN_S = 1.0
"""How long open requests may finish at shutdown (a status page poll takes milliseconds)."""
_MAX_PLAYS = 10_000
"""Most plays one ``/api/plays`` answer carries (the newest are kept; ``truncated`` says so)."""


class PlayQuery(Protocol):
    """Past plays, for ``/api/plays``. Blocking (reads files or a database): called in a thread.

    The daemon answers from the play history (``history.query.HistoryPlayQuery``); the JSON Lines
    play log has a reader too (``publish.playlog.PlayLogReader``)."""

    def plays(self, station: str | None, start: datetime | None, end: datetime | None) -> list[Play]:
        """Plays of ``station`` (all stations: ``None``) overlapping ``[start, end]``, oldest first."""
        ...


class Exposition(Protocol):
    def exposition(self) -> bytes: ...


class HttpServer:
    """``start()`` binds (a clear ``ConfigError`` if it cannot), ``serve()`` runs until cancelled."""

    def __init__(
        self, config: HttpConfig, status: StatusSource, plays: PlayQuery, metrics: Exposition,
        *, metrics_content_type: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._status = status
        self._plays = plays
        self._metrics = metrics
        self._metrics_type = metrics_content_type
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._page = (resources.files("tunetrace.observe") / "status.html").read_bytes()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/stations", self._stations)
        app.router.add_get("/api/plays", self._plays_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics_handler)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=_SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, self._config.host, self._config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"http.listen: cannot listen on {self._config.listen}: {exc.strerror or exc}; "
                "choose a free port or address"
            ) from None
        self._runner = runner
        if not self._config.loopback and self._config.token is None:
            log.warning("HTTP server on %s without http.token: anyone who can reach it sees every "
                        "station; set http.token or bind to 127.0.0.1", self._config.listen)
        log.info("HTTP server listening on %s (status page, /api, /healthz, /metrics)", self._config.listen)

    async def serve(self) -> None:
        """Until cancelled (the service's shutdown), then close the listener and open requests."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- middleware and handlers -------------------------------------------------------------------

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        token = self._config.token
        if token is None or request.path in _PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.query.get("access_token", "")
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise web.HTTPUnauthorized(
                text="401: this tunetrace needs its http.token as 'Authorization: Bearer <token>'\n",
                headers={"WWW-Authenticate": 'Bearer realm="tunetrace"'},
            )
        return await handler(request)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _stations(self, request: web.Request) -> web.Response:
        stations = [station_json(s) for s in self._status.stations()]
        return web.json_response({"generated_at": self._clock().isoformat(), "stations": stations})

    async def _plays_handler(self, request: web.Request) -> web.Response:
        station = request.query.get("station") or None
        start = _query_time(request, "from")
        end = _query_time(request, "to")
        if start is not None and end is not None and end < start:
            raise web.HTTPBadRequest(text="400: 'to' is before 'from'\n")
        plays = await asyncio.to_thread(self._plays.plays, station, start, end)
        truncated = len(plays) > _MAX_PLAYS
        return web.json_response({
            "station": station, "from": start.isoformat() if start else None,
            "to": end.isoformat() if end else None, "truncated": truncated,
            "plays": [p.to_json() for p in plays[-_MAX_PLAYS:]],
        })

    async def _healthz(self, request: web.Request) -> web.Response:
        problems = health_problems(self._status.stations())
        body = {"healthy": not problems, "problems": problems}
        return web.json_response(body, status=503 if problems else 200)

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self._metrics.exposition)
        response = web.Response(body=body)
        response.headers["Content-Type"] = self._metrics_type
        return response


def health_problems(stations: list[StationStatus]) -> list[str]:
    """Why ``/healthz`` fails, one line per problem (empty: healthy). Catalog reachability is judged
    by the stations' own searches, made every ``tracker.search_interval_s``: fresh, and free."""
    problems = []
    for station in stations:
        if not station.progressing:
            problems.append(f"{station.name}: no pipeline progress within http.progress_timeout_s")
        if station.health is not None and not station.health.catalog_up:
            problems.append(f"{station.name}: the catalog does not answer searches")
    return problems


def station_json(station: StationStatus) -> dict[str, Any]:
    health = station.health
    return {
        "name": station.name,
        "display_name": station.display_name,
        "state": station.state,
        "progressing": station.progressing,
        "source_up": health.source_up if health else False,
        "silent": health.silent if health else False,
        "catalog_up": health.catalog_up if health else True,
        "windows_processed": health.windows_processed if health else 0,
        "dropped_windows": health.dropped_windows if health else 0,
        "reconnects": health.reconnects if health else 0,
        "last_audio_at": health.last_audio_at.isoformat() if health and health.last_audio_at else None,
        "now_playing": station.now_playing.to_json() if station.now_playing else None,
        "recent_plays": [p.to_json() for p in station.recent_plays],
    }


def _query_time(request: web.Request, key: str) -> datetime | None:
    raw = request.query.get(key)
    if not raw:
        return None
    try:
        # An unencoded "+01:00" arrives as " 01:00" (a "+" in a query string is a space).
        parsed = datetime.fromisoformat(_PLUS_AS_SPACE.sub(r"+\1", raw.replace("Z", "+00:00")))
    except ValueError:
        raise web.HTTPBadRequest(
            text=f"400: {key}={raw!r} is not an ISO 8601 time (e.g. 2026-03-01T12:00:00Z)\n"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
