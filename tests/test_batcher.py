"""The recognition batcher: several stations' windows in one embedding call and one search, each
station's hits and decisions routed back to it, and one station's failure kept to that station.

Real encoder (the weight-free spectral one), the in-memory ``FakeCatalog`` behind the real
``Catalog`` Protocol, the real ``HorizonVoter``; no mocks.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.fakes import FakeCatalog, fake_track
from tests.fixtures.audio import synthetic_music
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.config import parse_config
from tunetrace.encoders.base import EncoderInfo
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.errors import CatalogError
from tunetrace.ringbuffer import WindowBatch
from tunetrace.store.base import Hit
from tunetrace.tracker import Observation
from tunetrace.voting import HorizonVoter, horizon_params
from tunetrace.voting.batcher import BatcherParams, RecognitionBatcher

TRACKS = {11: 1, 22: 2, 33: 3}
"""Catalog track id -> seed of its synthetic recording."""
TRACK_S = 40.0


class CountingEncoder:
    """The spectral encoder, counting calls; refuses windows holding the marker value ``0.123``
    (a station whose audio the encoder cannot take)."""

    def __init__(self) -> None:
        self._encoder = SpectralEncoder()
        self.calls: list[int] = []

    @property
    def info(self) -> EncoderInfo:
        return self._encoder.info

    def embed(self, windows: np.ndarray) -> np.ndarray:
        self.calls.append(len(windows))
        if np.any(windows == np.float32(0.123)):
            raise ValueError("the encoder refuses these windows")
        return self._encoder.embed(windows)


class BrokenVoter(HorizonVoter):
    """A voter whose decision fails: a bug confined to one station."""

    def observe(self, batch: WindowBatch, audible: np.ndarray, found: list[list[Hit]]) -> list[Observation]:
        raise RuntimeError("this station's voter is broken")


@pytest.fixture(scope="module")
def catalog() -> FakeCatalog:
    encoder = SpectralEncoder()
    info = encoder.info
    store = FakeCatalog()
    for track_id, seed in TRACKS.items():
        audio = synthetic_music(TRACK_S, info.sample_rate, seed=seed)
        windows, starts = frame(audio, WindowSpec(info.sample_rate, info.window_s, info.hop_s))
        store.add_track(fake_track(track_id, f"t{track_id}", len(starts), TRACK_S), encoder.embed(windows),
                        starts / info.sample_rate)
    return store


def _voter(
    encoder: CountingEncoder, catalog: FakeCatalog, cls: type[HorizonVoter] = HorizonVoter,
) -> HorizonVoter:
    config = parse_config({})
    return cls(encoder, catalog, catalog.shape, horizon_params(
        encoder, config.matcher, config.tracker, silence_threshold_dbfs=-60.0,
    ))


def _batch(
    track_id: int, from_s: float, seconds: float = 6.0, *, marker: bool = False, stream_s: float = 0.0,
) -> WindowBatch:
    """``seconds`` of track ``track_id`` from ``from_s``, as the live windows a station reads, the
    first at ``stream_s`` on the station's stream clock."""
    info = SpectralEncoder().info
    rate = info.sample_rate
    track = synthetic_music(TRACK_S, rate, seed=TRACKS[track_id])
    audio = track[round(from_s * rate) : round((from_s + seconds) * rate)]
    if marker:
        audio = audio.copy()
        audio[100] = np.float32(0.123)
    windows, starts = frame(audio, WindowSpec(rate, info.window_s, parse_config({}).tracker.window_hop_s))
    return WindowBatch(windows, starts.astype(np.int64) + round(stream_s * rate))


def _best(observations: list[Observation]) -> tuple[int, float]:
    best = observations[-1].candidates[0]
    return best.track_id, best.alignment_s


def test_several_stations_share_one_embedding_and_one_search_and_get_their_own_decisions(
    catalog: FakeCatalog,
) -> None:
    encoder = CountingEncoder()
    voters = {track_id: _voter(encoder, catalog) for track_id in TRACKS}
    batches = {11: _batch(11, 5.0), 22: _batch(22, 12.0), 33: _batch(33, 20.0)}

    async def main() -> list[list[Observation]]:
        with ThreadPoolExecutor(max_workers=2) as executor:
            batcher = RecognitionBatcher(encoder, catalog, executor, BatcherParams(gather_s=0.05))
            results = await asyncio.wait_for(asyncio.gather(
                *(batcher.process(voters[t], batches[t]) for t in TRACKS)), timeout=30)
            assert batcher.calls == 1
            return list(results)

    searches_before = catalog.searches
    results = asyncio.run(main())

    assert catalog.searches - searches_before == 1, "one search request for all three stations"
    assert encoder.calls == [sum(len(b) for b in batches.values())], "one embedding call"
    for (track_id, position_s), observations in zip(
        ((11, 5.0), (22, 12.0), (33, 20.0)), results, strict=True,
    ):
        alone = _voter(CountingEncoder(), catalog).process(batches[track_id])
        assert observations == alone, "the decisions the station's voter makes on its own windows"
        best_track, alignment_s = _best(observations)
        assert best_track == track_id, "each station's hits were routed back to it"
        assert abs(alignment_s - position_s) <= 0.5


def test_a_station_alone_decides_exactly_as_its_voter_would_without_the_batcher(catalog: FakeCatalog) -> None:
    encoder = CountingEncoder()
    alone, batched = _voter(encoder, catalog), _voter(encoder, catalog)
    first, second = _batch(22, 3.0), _batch(22, 9.0, stream_s=6.0)
    expected = alone.process(first) + alone.process(second)

    async def main() -> list[Observation]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = RecognitionBatcher(encoder, catalog, executor, BatcherParams(gather_s=0.0))
            return (await batcher.process(batched, first)) + (await batcher.process(batched, second))

    assert asyncio.run(main()) == expected


def test_a_failing_voter_fails_only_its_own_station(catalog: FakeCatalog) -> None:
    encoder = CountingEncoder()
    good, broken = _voter(encoder, catalog), _voter(encoder, catalog, BrokenVoter)

    async def main() -> tuple[list[Observation], BaseException | list[Observation]]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = RecognitionBatcher(encoder, catalog, executor, BatcherParams(gather_s=0.05))
            ok, failed = await asyncio.wait_for(asyncio.gather(
                batcher.process(good, _batch(33, 10.0)), batcher.process(broken, _batch(11, 10.0)),
                return_exceptions=True), timeout=30)
            assert batcher.calls == 1
            assert isinstance(ok, list)
            return ok, failed

    ok, failed = asyncio.run(main())
    assert _best(ok)[0] == 33
    assert isinstance(failed, RuntimeError)


def test_windows_the_encoder_refuses_lose_only_that_stations_windows(catalog: FakeCatalog) -> None:
    encoder = CountingEncoder()
    good, bad = _voter(encoder, catalog), _voter(encoder, catalog)
    good_batch, bad_batch = _batch(22, 15.0), _batch(11, 15.0, marker=True)

    async def main() -> list[BaseException | list[Observation]]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = RecognitionBatcher(encoder, catalog, executor, BatcherParams(gather_s=0.05))
            return list(await asyncio.wait_for(asyncio.gather(
                batcher.process(bad, bad_batch), batcher.process(good, good_batch), return_exceptions=True,
            ), timeout=30))

    failed, ok = asyncio.run(main())
    assert isinstance(ok, list) and _best(ok)[0] == 22
    assert isinstance(failed, ValueError)
    # The joint call failed, then each station's windows were embedded alone.
    assert encoder.calls == [len(bad_batch) + len(good_batch), len(bad_batch), len(good_batch)]


def test_an_unreachable_catalog_fails_every_station_of_the_call_and_the_next_call_recovers(
    catalog: FakeCatalog,
) -> None:
    encoder = CountingEncoder()
    voters = [_voter(encoder, catalog), _voter(encoder, catalog)]

    async def main() -> list[BaseException | list[Observation]]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = RecognitionBatcher(encoder, catalog, executor, BatcherParams(gather_s=0.05))
            catalog.failing = True
            try:
                failed = await asyncio.wait_for(asyncio.gather(
                    *(batcher.process(v, _batch(11, 2.0)) for v in voters), return_exceptions=True,
                ), timeout=30)
            finally:
                catalog.failing = False
            recovered = await asyncio.wait_for(asyncio.gather(
                *(batcher.process(v, _batch(11, 8.0)) for v in voters)), timeout=30)
            return [*failed, *recovered]

    first, second, *recovered = asyncio.run(main())
    assert isinstance(first, CatalogError) and isinstance(second, CatalogError)
    assert all(isinstance(r, list) and _best(r)[0] == 11 for r in recovered)


def test_pending_windows_past_the_limit_are_sent_at_once(catalog: FakeCatalog) -> None:
    """``max_windows`` bounds a call: a full batch does not wait for the gather time."""
    encoder = CountingEncoder()
    voter = _voter(encoder, catalog)
    batch = _batch(22, 0.0)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = RecognitionBatcher(encoder, catalog, executor,
                                         BatcherParams(gather_s=20.0, max_windows=len(batch)))
            started = loop.time()
            await asyncio.wait_for(batcher.process(voter, batch), timeout=10)
            return loop.time() - started

    assert asyncio.run(main()) < 5.0


def test_the_stage_measurement_counts_every_window_and_decision(catalog: FakeCatalog) -> None:
    """``evaluation.stages`` (CPU per window by stage) feeds the voter as a station on air does."""
    from tunetrace.evaluation.stages import STAGES, measure
    from tunetrace.tracker import PlayTracker, TrackerParams

    encoder = CountingEncoder()
    voter = _voter(encoder, catalog)
    batch = _batch(33, 4.0, seconds=10.0)
    per_call = 2
    tracker_config = parse_config({}).tracker
    tracker = PlayTracker(TrackerParams.from_config(tracker_config))
    times = measure(voter, tracker, batch.windows, batch.start_samples, per_call,
                    encoder.embed, catalog.search)

    whole_calls = len(batch) // per_call
    assert times.windows == whole_calls * per_call
    assert encoder.calls == [per_call] * whole_calls
    windows_per_decision = round(tracker_config.decision_interval_s / tracker_config.window_hop_s)
    assert times.decisions == times.windows // windows_per_decision
    assert set(times.per_window_ms()) == set(STAGES)
    assert all(v >= 0 for v in times.cpu_s.values())
    assert tracker.current is not None and tracker.current.track_id == 33, "the track was recognised"


def test_a_large_call_is_embedded_in_chunks_of_the_encoder_batch_size(catalog: FakeCatalog) -> None:
    """The encoder's working memory stays at one encoder batch however many stations submit."""
    encoder = CountingEncoder()
    voters = [_voter(encoder, catalog) for _ in range(3)]
    batches = [_batch(22, 4.0 * i, seconds=3.0) for i in range(3)]
    total = sum(len(b) for b in batches)

    async def main() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            params = BatcherParams(gather_s=0.05, embed_windows=5)
            batcher = RecognitionBatcher(encoder, catalog, executor, params)
            await asyncio.wait_for(asyncio.gather(
                *(batcher.process(v, b) for v, b in zip(voters, batches, strict=True))), timeout=30)

    asyncio.run(main())
    assert sum(encoder.calls) == total
    assert max(encoder.calls) == 5 and len(encoder.calls) == -(-total // 5)
