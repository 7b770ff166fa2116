"""Sources: ffmpeg argument lists, reading files and Icecast, reconnect with backoff, stalls, silence."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from tests.fixtures.audio import run_ffmpeg, synthetic_music, write_wav
from tests.fixtures.streams import IcecastServer
from tunetrace.audio.decode import PIPE_BLOCK_S, decode_file, ffmpeg_decode_args
from tunetrace.redact import redact_url
from tunetrace.sources import AudioBlock, Backoff, BackoffPolicy, RunnerParams, SourceError, SourceRunner
from tunetrace.sources.ffmpeg import BLOCK_S, FfmpegSource, ffmpeg_args, input_args
from tunetrace.sources.soundcard import StreamResampler

RATE = 8000


def params(**overrides: float) -> RunnerParams:
    values = {"initial_s": 0.01, "max_s": 0.05, "stall_timeout_s": 5.0, "silence_threshold_dbfs": -55.0,
              "silence_after_s": 1.0} | overrides
    return RunnerParams(RATE, BackoffPolicy(values["initial_s"], values["max_s"]), values["stall_timeout_s"],
                        values["silence_threshold_dbfs"], values["silence_after_s"])


class ScriptedSource:
    """A real ``AudioSource`` whose sessions follow a script: ``"fail"``, ``"hang"`` or a list of blocks."""

    description = "scripted"

    def __init__(self, sessions: list[object], *, realtime: bool = False) -> None:
        self._sessions = list(sessions)
        self.realtime = realtime
        self.started = 0

    async def session(self) -> AsyncIterator[np.ndarray]:
        self.started += 1
        script = self._sessions.pop(0) if self._sessions else "hang"
        if script == "fail":
            raise SourceError("connection refused")
        if script == "hang":
            await asyncio.sleep(3600)
        assert isinstance(script, list)
        for block in script:
            yield block


async def take(runner: SourceRunner, count: int, timeout_s: float = 10.0) -> list[AudioBlock]:
    blocks: list[AudioBlock] = []
    async with asyncio.timeout(timeout_s):
        async for block in runner.blocks():
            blocks.append(block)
            if len(blocks) == count:
                break
    return blocks


def test_backoff_grows_exponentially_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(BackoffPolicy(initial_s=1.0, max_s=8.0, jitter=0.5), random.Random(1))
    delays = [backoff.next_delay_s() for _ in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays), "jitter spreads restarts"
    backoff.reset()
    assert backoff.next_delay_s() <= 1.0


def test_http_mp3_streams_get_fast_start_and_reconnect_options() -> None:
    args = input_args("http://radio.example/live.mp3", realtime=True, loop=False)
    assert args[args.index("-f") + 1] == "mp3"
    assert args[args.index("-probesize") + 1] == "4096"
    assert args[args.index("-analyzeduration") + 1] == "0"
    assert "-reconnect" in args and "-reconnect_streamed" in args
    ogg = input_args("https://radio.example/live.ogg", realtime=True, loop=False)
    assert "-f" not in ogg and "-reconnect" in ogg
    assert input_args("rtsp://cam/audio", realtime=True, loop=False)[:2] == ["-rtsp_transport", "tcp"]
    assert input_args("/music/a.flac", realtime=True, loop=True) == ["-stream_loop", "-1", "-re"]
    assert input_args("/music/a.flac", realtime=False, loop=False) == []


def test_ffmpeg_gets_an_argument_list_and_credentials_are_redacted_for_logs() -> None:
    plain = "http://radio.example:8000/live.mp3"
    args = ffmpeg_args(plain, RATE, realtime=True, loop=False)
    assert args[args.index("-i") + 1] == plain, "the URL is one argument, never parsed by a shell"
    url = "http://user:s3cret@radio.example:8000/live.mp3"
    args = ffmpeg_args(url, RATE, realtime=True, loop=False)
    assert not any("s3cret" in a for a in args), "credentials go to ffmpeg's stdin, not its argv"
    assert args[-6:] == ["-ar", str(RATE), "-f", "f32le", "pipe:1"][-5:] or "pipe:1" in args
    assert redact_url(url) == "http://***@radio.example:8000/live.mp3"
    assert "s3cret" not in FfmpegSource(url, RATE).description


def test_a_file_read_as_fast_as_possible_yields_exactly_its_decoded_audio(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "m.wav", synthetic_music(6.0, 16000, seed=4), 16000)
    source = FfmpegSource(str(wav), RATE, realtime=False)

    async def read_all() -> np.ndarray:
        runner = SourceRunner(source, params(), until_eof=True)
        blocks = [b async for b in runner.blocks()]
        sizes = [0] + [b.samples.size for b in blocks[:-1]]
        assert [b.start_sample for b in blocks] == list(np.cumsum(sizes))
        return np.concatenate([b.samples for b in blocks])

    audio = asyncio.run(read_all())
    np.testing.assert_allclose(audio, decode_file(wav, RATE), atol=1e-6)


@pytest.mark.parametrize("command", ["station", "file decode"])
def test_ffmpeg_hands_a_compressed_stream_over_in_whole_blocks_of_the_same_samples(
    tmp_path: Path, command: str,
) -> None:
    """An MP3 decodes in 1,152-sample frames; unfiltered, ffmpeg wrote each one to the pipe as it
    came (~38 writes a second, each a wake-up of the reader), where a station reads 0.25 s blocks
    and a file's decoder 10 s ones."""
    wav = write_wav(tmp_path / "m.wav", synthetic_music(4.0, 44100, seed=5), 44100)
    mp3 = tmp_path / "m.mp3"
    run_ffmpeg(["-i", str(wav), "-c:a", "libmp3lame", "-b:a", "128k", str(mp3)])
    # Read at the audio's pace (-re), as on air: the pipe never fills, so each read is what one
    # write or more put there, never part of a write left behind by a full pipe.
    if command == "station":
        args, block_s = ffmpeg_args(str(mp3), RATE, realtime=True, loop=False), BLOCK_S
    else:
        args, block_s = ffmpeg_decode_args(str(mp3), RATE, ("-re",)), PIPE_BLOCK_S
    block = args[args.index("-af") + 1]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    reads = []
    while chunk := os.read(process.stdout.fileno(), 1 << 20):
        reads.append(chunk)
    process.wait()
    block_bytes = round(block_s * RATE) * 4
    assert len(reads) >= 4
    assert all(len(chunk) % block_bytes == 0 for chunk in reads[:-1]), [len(c) for c in reads]
    plain = subprocess.run(  # the same decode without the block filter, as fast as possible
        [a for a in args if a not in ("-af", block, "-re")], capture_output=True, check=True,
    ).stdout
    assert b"".join(reads) == plain


def test_a_missing_file_is_a_source_error_and_is_retried_with_backoff(tmp_path: Path) -> None:
    source = FfmpegSource(str(tmp_path / "absent.wav"), RATE, realtime=False)

    async def first_session() -> None:
        async for _ in source.session():
            pass

    with pytest.raises(SourceError, match="no such file"):
        asyncio.run(first_session())


def test_failed_sessions_are_retried_and_the_sample_index_continues() -> None:
    block = np.full(800, 0.1, np.float32)
    source = ScriptedSource(["fail", [block, block], "fail", "fail", [block]])
    runner = SourceRunner(source, params())
    blocks = asyncio.run(take(runner, 3))
    assert [b.start_sample for b in blocks] == [0, 800, 1600]
    assert runner.state.reconnects == 4
    assert source.started == 5


def test_for_realtime_sources_an_outage_advances_the_stream_clock() -> None:
    block = np.full(800, 0.1, np.float32)
    source = ScriptedSource([[block], "fail", [block]], realtime=True)
    runner = SourceRunner(source, params(initial_s=0.3, max_s=0.3))
    first, second = asyncio.run(take(runner, 2))
    gap_s = (second.start_sample - first.start_sample - 800) / RATE
    assert 0.1 < gap_s < 2.0, "the outage's wall time appears as a gap in the stream"


def test_a_stalled_stream_counts_the_stall_itself_as_outage_time() -> None:
    """The stream went quiet when its last block arrived, not when the stall was detected."""
    block = np.full(800, 0.1, np.float32)

    class StallsAfterOneBlock(ScriptedSource):
        async def session(self) -> AsyncIterator[np.ndarray]:
            self.started += 1
            yield block
            if self.started == 1:
                await asyncio.sleep(3600)

    stall_s, backoff_s = 0.6, 0.05
    stream = StallsAfterOneBlock([], realtime=True)
    runner = SourceRunner(stream, params(initial_s=backoff_s, max_s=backoff_s, stall_timeout_s=stall_s))
    first, second = asyncio.run(take(runner, 2))
    gap_s = (second.start_sample - first.start_sample - block.size) / RATE
    assert gap_s >= stall_s, f"a gap of {gap_s:.2f} s leaves out the {stall_s} s stall"
    assert gap_s < stall_s + 1.0


def test_a_stalled_source_counts_as_down_and_is_restarted() -> None:
    block = np.full(800, 0.1, np.float32)
    source = ScriptedSource([[block], "hang", [block]], realtime=False)
    changes: list[bool] = []
    runner = SourceRunner(
        source, params(stall_timeout_s=0.3), on_change=lambda: changes.append(runner.state.up),
    )
    blocks = asyncio.run(take(runner, 2))
    assert len(blocks) == 2
    assert runner.state.reconnects >= 1
    assert "stall" in (runner.state.last_error or "") or changes.count(False) >= 1
    assert changes[:2] == [True, False]


def test_silence_is_detected_after_the_configured_time_and_cleared_by_audio() -> None:
    quiet = np.zeros(800, np.float32)  # 0.1 s each
    loud = np.full(800, 0.1, np.float32)
    source = ScriptedSource([[loud] + [quiet] * 15 + [loud]])
    seen: list[bool] = []
    runner = SourceRunner(
        source, params(silence_after_s=1.0), on_change=lambda: seen.append(runner.state.silent),
    )

    async def collect() -> list[bool]:
        silent_after: list[bool] = []
        async with asyncio.timeout(5):
            async for _ in runner.blocks():
                silent_after.append(runner.state.silent)
                if len(silent_after) == 17:
                    break
        return silent_after

    states = asyncio.run(collect())
    assert states.index(True) == 10, "silent once 1.0 s of quiet blocks arrived"
    assert states[-1] is False
    assert True in seen and seen[-1] is False


def test_stream_resampler_is_seamless_across_blocks() -> None:
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(44100 * 2).astype(np.float32)
    resampler = StreamResampler(44100, RATE)
    out, position = [], 0
    while position < audio.size:
        n = int(rng.integers(50, 5000))
        out.append(resampler.process(audio[position : position + n]))
        position += n
    streamed = np.concatenate(out)
    whole = resample_poly(audio, 80, 441)
    np.testing.assert_allclose(streamed, whole[: streamed.size], atol=1e-5)
    assert whole.size - streamed.size < 200, "only the last few samples wait for more input"


def test_icecast_mp3_stream_is_read_within_seconds(icecast: IcecastServer, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "m.wav", synthetic_music(20.0, 22050, seed=2), 22050)
    icecast.publish(wav, "radio.mp3")
    source = FfmpegSource(icecast.url("radio.mp3"), RATE)

    async def first_seconds() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = 0
        first_at = 0.0
        async with asyncio.timeout(15):
            async for block in source.session():
                if received == 0:
                    first_at = loop.time() - started
                received += block.size
                if received >= 2 * RATE:
                    break
        return first_at, received

    first_at, received = asyncio.run(first_seconds())
    assert received >= 2 * RATE
    assert first_at < 3.0, f"first audio after {first_at:.2f} s (fast-start options missing?)"
