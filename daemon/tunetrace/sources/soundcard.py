"""A sound card through sounddevice/PortAudio: the only module that imports sounddevice.

PortAudio calls back on its own thread; each callback's block is handed to the event loop through
a bounded queue.  Overflow policy: when the loop falls behind by ``QUEUE_BLOCKS`` blocks, the
oldest block is dropped and counted (capture never blocks the audio thread).  The card is opened
at its own rate and channel count, then downmixed and resampled to the encoder's rate here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from math import gcd
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from tunetrace.errors import SourceError

log = logging.getLogger(__name__)

BLOCK_S = 0.1
QUEUE_BLOCKS = 100
"""Ten seconds of audio may wait for the loop before the oldest block is dropped."""


class StreamResampler:
    """Block-wise polyphase resampling without seams.

    Each block is filtered together with a tail of earlier input, and only output samples whose
    filter support lies entirely inside the buffer are emitted (the newest few wait for the next
    block), so the concatenated output equals resampling the whole stream at once.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        divisor = gcd(in_rate, out_rate)
        self._up, self._down = out_rate // divisor, in_rate // divisor
        # resample_poly's default FIR has 10 * max(up, down) taps on each side at the upsampled rate.
        half_taps = 10 * max(self._up, self._down)
        self._guard_out = half_taps // self._down + 2
        periods = (2 * half_taps // self._up + 4 * self._down) // self._down + 1
        self._keep_in = periods * self._down
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start_in = 0
        self._emitted_out = 0

    @property
    def identity(self) -> bool:
        return self._up == self._down

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self.identity:
            return samples
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float32, copy=False)])
        usable = self._buffer.size - self._buffer.size % self._down
        if usable == 0:
            return np.zeros(0, np.float32)
        out = resample_poly(self._buffer[:usable], self._up, self._down)
        first_out = self._buffer_start_in * self._up // self._down
        valid_end = first_out + usable * self._up // self._down - self._guard_out
        begin = self._emitted_out - first_out
        produced: np.ndarray = np.asarray(out[begin : max(begin, valid_end - first_out)], np.float32)
        self._emitted_out += produced.size
        drop = max(0, usable - self._keep_in)
        drop -= drop % self._down
        self._buffer = self._buffer[drop:]
        self._buffer_start_in += drop
        return produced


def _pick_device(sd: Any, device: str | int | None) -> int | None:
    if device is None or isinstance(device, int):
        return device
    inputs = [
        (index, info["name"]) for index, info in enumerate(sd.query_devices())
        if info["max_input_channels"] > 0
    ]
    for index, name in inputs:
        if name == device:
            return index
    for index, name in inputs:
        if device.lower() in name.lower():
            return index
    names = ", ".join(f"{i}: {n}" for i, n in inputs) or "none"
    raise SourceError(f"no input device matching {device!r}; input devices: {names}")


class SoundcardSource:
    def __init__(
        self, device: str | int | None, sample_rate: int, *, capture_rate_hz: int | None = None,
        channels: int = 1,
    ) -> None:
        self._device = device
        self._sample_rate = sample_rate
        self._capture_rate_hz = capture_rate_hz
        self._channels = channels
        self.dropped_blocks = 0

    @property
    def description(self) -> str:
        return f"sound card {self._device if self._device is not None else '(default)'}"

    @property
    def realtime(self) -> bool:
        return True

    async def session(self) -> AsyncIterator[np.ndarray]:
        try:
            import sounddevice as sd
        except OSError as exc:
            raise SourceError(f"PortAudio is not available: {exc}") from exc
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=QUEUE_BLOCKS)
        failed: list[str] = []

        def enqueue(block: np.ndarray) -> None:
            if queue.full():
                queue.get_nowait()
                self.dropped_blocks += 1
            queue.put_nowait(block)

        def callback(indata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
            if status.input_overflow:
                log.debug("%s: input overflow", self.description)
            mono = indata.mean(axis=1, dtype=np.float32) if indata.shape[1] > 1 else indata[:, 0].copy()
            with contextlib.suppress(RuntimeError):  # the loop closed while the stream was stopping
                loop.call_soon_threadsafe(enqueue, mono)

        def finished() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(failed.append, "stream stopped")

        try:
            device = _pick_device(sd, self._device)
            rate = self._capture_rate_hz or int(sd.query_devices(device, "input")["default_samplerate"])
            stream = sd.InputStream(
                samplerate=rate, channels=self._channels, dtype="float32", device=device,
                callback=callback, blocksize=max(1, round(rate * BLOCK_S)),
                finished_callback=finished,
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise SourceError(f"{self.description}: cannot open: {exc}") from exc
        resampler = StreamResampler(rate, self._sample_rate)
        with stream:
            while True:
                try:
                    async with asyncio.timeout(1.0):
                        block = await queue.get()
                except TimeoutError:
                    if failed or not stream.active:
                        raise SourceError(f"{self.description}: capture stopped") from None
                    continue
                out = resampler.process(block)
                if out.size:
                    yield out
