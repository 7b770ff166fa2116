"""All stations' due windows in one embedding call and one catalog search per tick.

On air every station has a few new windows every ``search_interval_s``; embedding and searching
them station by station costs one executor hand-off, one encoder call and one search request (with
its fixed client and server overhead) per station and tick. ``RecognitionBatcher`` collects the
stations' requests for up to ``gather_s``, then makes one executor call that embeds the audible
windows of every request at once, searches them in one request, and runs each station's voter on
its own share of the hits, so a tick costs one hand-off however many stations are on air.

Routing and faults: each request carries its station's voter, so hits go back to the station whose
windows they are (rows are split by count, in submission order). A failure that concerns the
shared catalog (``CatalogError``: Milvus unreachable) fails every request of that call, as it
would have failed each station's own search; any other failure is the station's own: a voter that
raises fails only its request, and a failed joint embedding is retried request by request, so one
station's bad windows never lose another station's.

Queue policy: a station awaits its own request before it submits the next one, so at most one
request per station is pending and the queue is bounded by the number of stations; a station
that falls behind does not queue more work here, its ring buffer skips to the newest windows
(``ringbuffer``'s overflow policy). A call is made when ``gather_s`` has passed since the first
pending request or as soon as the pending windows reach ``max_windows``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from tunetrace.encoders.base import Encoder
from tunetrace.errors import CatalogError
from tunetrace.observe.base import NullStationMetrics, StationMetrics
from tunetrace.ringbuffer import WindowBatch
from tunetrace.store.base import Catalog, Hit
from tunetrace.tracker import Observation
from tunetrace.voting.horizon import HorizonVoter


@dataclass(frozen=True)
class BatcherParams:
    gather_s: float = 0.1
    """How long the first pending request waits for other stations' before the call is made:
    longer means fewer, larger calls (cheaper) and later decisions on the wall clock (never on the
    stream clock: observations carry their windows' stream time)."""
    max_windows: int = 256
    """A call is made at once when this many windows are pending (bounds one call's latency)."""
    embed_windows: int = 64
    """Most windows per encoder call (``encoder.batch_size``): a call's windows are embedded in
    chunks of this size, so the encoder's working memory (onnxruntime keeps its arena at the
    largest batch it has seen) does not grow with the number of stations."""


@dataclass
class _Request:
    voter: HorizonVoter
    batch: WindowBatch
    metrics: StationMetrics
    context: contextvars.Context
    """The submitting station's context (its log scope), in which its voter runs."""
    future: asyncio.Future[list[Observation]]
    audible: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(frozen=True)
class _Outcome:
    observations: list[Observation] | None = None
    error: BaseException | None = None


class RecognitionBatcher:
    """Embeds, searches and votes for every station in one executor call per tick (one per loop)."""

    def __init__(
        self, encoder: Encoder, catalog: Catalog, executor: Executor, params: BatcherParams | None = None,
        *, clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._encoder = encoder
        self._catalog = catalog
        self._executor = executor
        self._params = params or BatcherParams()
        self._clock = clock
        self._pending: list[_Request] = []
        self._pending_windows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self.calls = 0
        """Executor calls made so far (each: one embedding call and at most one search)."""

    async def process(
        self, voter: HorizonVoter, batch: WindowBatch, metrics: StationMetrics | None = None,
    ) -> list[Observation]:
        """The station's observations for ``batch``, decided in a call shared with other stations.

        Raises what the station's own ``voter.process`` would have: ``CatalogError`` when the
        catalog cannot be searched, or the voter's own error."""
        if len(batch) == 0:
            return []
        loop = asyncio.get_running_loop()
        request = _Request(voter, batch, metrics or NullStationMetrics(), contextvars.copy_context(),
                           loop.create_future())
        self._pending.append(request)
        self._pending_windows += len(batch)
        if self._pending_windows >= self._params.max_windows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._params.gather_s, self._flush)
        return await request.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        requests, self._pending, self._pending_windows = self._pending, [], 0
        if not requests:
            return
        self.calls += 1
        task = asyncio.get_running_loop().create_task(self._call(requests), name="recognition-batch")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, requests: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(self._executor, self._recognise, requests)
        except BaseException as exc:  # the executor shut down, or this task was cancelled
            outcomes = [_Outcome(error=exc)] * len(requests)
            if not isinstance(exc, Exception):
                for request in requests:
                    request.future.cancel()
                raise
        for request, outcome in zip(requests, outcomes, strict=True):
            if request.future.done():  # its station was cancelled while waiting
                continue
            if outcome.error is not None:
                request.future.set_exception(outcome.error)
            else:
                request.future.set_result(outcome.observations or [])

    def _recognise(self, requests: list[_Request]) -> list[_Outcome]:
        """Blocking (in the executor): one embedding, one search, then each station's vote."""
        outcomes: dict[int, _Outcome] = {}
        live: list[_Request] = []
        for index, request in enumerate(requests):
            try:
                request.audible = request.context.run(request.voter.audible, request.batch)
                live.append(request)
            except Exception as exc:  # this station's failure, reported to it alone
                outcomes[index] = _Outcome(error=exc)
        found = self._search(live)
        for index, request in enumerate(requests):
            if index in outcomes:
                continue
            hits = found.get(id(request))
            if isinstance(hits, BaseException):
                outcomes[index] = _Outcome(error=hits)
                continue
            try:
                observations = request.context.run(request.voter.observe, request.batch, request.audible,
                                                   hits or [])
                outcomes[index] = _Outcome(observations=observations)
            except Exception as exc:  # this station's failure, reported to it alone
                outcomes[index] = _Outcome(error=exc)
        return [outcomes[i] for i in range(len(requests))]

    def _search(self, requests: list[_Request]) -> dict[int, list[list[Hit]] | BaseException]:
        """Each request's hits (by ``id``), from one embedding and one search where possible."""
        audible = [r for r in requests if r.audible.size]
        if not audible:
            return {}
        try:
            vectors = self._embed(np.concatenate([r.batch.windows[r.audible] for r in audible], axis=0))
        except Exception:  # find whose windows the encoder refuses
            return self._one_by_one(audible)
        top_k = max(r.voter.top_k for r in audible)
        started = self._clock()
        try:
            found = self._catalog.search(vectors, top_k)
        except CatalogError as exc:
            elapsed = self._clock() - started
            for request in audible:
                request.metrics.searched(elapsed, ok=False)
            return {id(r): exc for r in audible}
        elapsed = self._clock() - started
        routed: dict[int, list[list[Hit]] | BaseException] = {}
        first = 0
        for request in audible:
            request.metrics.searched(elapsed, ok=True)
            rows = found[first : first + request.audible.size]
            first += request.audible.size
            routed[id(request)] = [window_hits[: request.voter.top_k] for window_hits in rows]
        return routed

    def _embed(self, windows: np.ndarray) -> np.ndarray:
        step = max(1, self._params.embed_windows)
        if len(windows) <= step:
            return self._encoder.embed(windows)
        chunks = [self._encoder.embed(windows[i : i + step]) for i in range(0, len(windows), step)]
        return np.concatenate(chunks)

    def _one_by_one(self, requests: list[_Request]) -> dict[int, list[list[Hit]] | BaseException]:
        """The joint embedding failed: embed and search each request alone, so only the station
        whose windows fail loses them."""
        routed: dict[int, list[list[Hit]] | BaseException] = {}
        for request in requests:
            try:
                vectors = request.context.run(self._embed, request.batch.windows[request.audible])
                routed[id(request)] = self._catalog.search(vectors, request.voter.top_k)
            except Exception as exc:  # this station's failure, reported to it alone
                routed[id(request)] = exc
        return routed
