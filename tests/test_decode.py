"""Decoding through the real FFmpeg: every common format gives the same mono signal at the asked rate.

One synthetic recording is encoded by ffmpeg into each format; decoding must give the same length
(within one codec frame: encoders pad to whole frames) and the same waveform, without a time shift,
because catalog offsets are only as good as the decoder's sample 0.  Queries are decoded in-process
(``decode_file``, PyAV) and the catalog by an ffmpeg child (``iter_pcm_blocks``): both must give
the same samples, or a query would not land where its catalog windows are.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.audio import ffmpeg_path, run_ffmpeg, synthetic_music, write_wav
from tunetrace.audio.decode import audio_stream_sha256, decode_file, iter_pcm_blocks, probe_tags
from tunetrace.errors import DecodeError

SOURCE_RATE = 44100
DECODE_RATE = 8000
DURATION_S = 3.0
LARGEST_CODEC_FRAME = 1152
"""MP3's frame, in source samples; AAC uses 1024, Opus at most 960 (at 48 kHz)."""
FRAME_TOLERANCE = int(np.ceil(LARGEST_CODEC_FRAME * DECODE_RATE / SOURCE_RATE))

FORMATS = {
    "wav": ["-c:a", "pcm_s16le"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "5"],
    "flac": ["-c:a", "flac"],
    "m4a": ["-c:a", "aac", "-b:a", "128k"],
    "opus": ["-c:a", "libopus", "-b:a", "96k"],
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("decode")
    return write_wav(folder / "reference.wav", synthetic_music(DURATION_S, SOURCE_RATE, seed=5), SOURCE_RATE)


@pytest.fixture(scope="module")
def reference_pcm(reference: Path) -> np.ndarray:
    return decode_file(reference, DECODE_RATE)


def encode(reference: Path, extension: str, *extra: str) -> Path:
    target = reference.parent / f"encoded-{len(extra)}.{extension}"
    run_ffmpeg(["-i", str(reference), *FORMATS[extension], *extra, str(target)])
    return target


@pytest.mark.parametrize("extension", sorted(FORMATS))
def test_every_format_decodes_to_the_same_mono_signal(
    reference: Path, reference_pcm: np.ndarray, extension: str
) -> None:
    decoded = decode_file(encode(reference, extension), DECODE_RATE)

    assert decoded.dtype == np.float32
    assert decoded.ndim == 1
    assert abs(decoded.size - round(DURATION_S * DECODE_RATE)) <= FRAME_TOLERANCE
    common = min(decoded.size, reference_pcm.size)
    lags = range(-8, 9)
    correlations = [
        float(np.corrcoef(np.roll(decoded[:common], lag), reference_pcm[:common])[0, 1]) for lag in lags
    ]
    best_lag = lags[int(np.argmax(correlations))]
    assert abs(best_lag) <= 1, f"{extension} decodes {best_lag} samples late"
    assert max(correlations) > 0.98


@pytest.mark.parametrize("extension", sorted(FORMATS))
def test_the_in_process_decoder_gives_the_ffmpeg_childs_samples(reference: Path, extension: str) -> None:
    encoded = encode(reference, extension)
    in_process = decode_file(encoded, DECODE_RATE)
    by_child = np.concatenate(list(iter_pcm_blocks(encoded, DECODE_RATE)))

    assert in_process.dtype == np.float32
    assert in_process.size == by_child.size, f"{extension}: {in_process.size} vs {by_child.size} samples"
    # The same libswresample defaults; the bundled FFmpeg is newer than Debian's, hence not bit-exact.
    assert float(np.max(np.abs(in_process - by_child))) < 1e-3
    assert float(np.corrcoef(in_process, by_child)[0, 1]) > 0.9999


def test_a_query_stops_decoding_at_its_limit(reference: Path, reference_pcm: np.ndarray) -> None:
    first_second = decode_file(reference, DECODE_RATE, max_seconds=1.0)
    assert first_second.size == DECODE_RATE
    assert np.array_equal(first_second, reference_pcm[:DECODE_RATE])
    assert decode_file(reference, DECODE_RATE, max_seconds=60.0).size == reference_pcm.size


def test_a_damaged_tail_keeps_the_audio_before_it(reference: Path, reference_pcm: np.ndarray) -> None:
    whole = encode(reference, "mp3").read_bytes()
    cut = reference.parent / "cut-short.mp3"
    cut.write_bytes(whole[: len(whole) // 2] + b"\x00\xff" * 500)
    decoded = decode_file(cut, DECODE_RATE)
    assert 0.3 * reference_pcm.size < decoded.size < 0.7 * reference_pcm.size
    common = min(decoded.size, reference_pcm.size) - DECODE_RATE // 4  # the last frame may be garbled
    assert float(np.corrcoef(decoded[:common], reference_pcm[:common])[0, 1]) > 0.98


def test_decoding_resamples_to_the_requested_rate(reference: Path) -> None:
    assert decode_file(reference, 16000).size == round(DURATION_S * 16000)
    assert decode_file(reference, 8000).size == round(DURATION_S * 8000)


def test_stereo_is_mixed_to_mono(reference: Path, reference_pcm: np.ndarray) -> None:
    stereo = reference.parent / "stereo.wav"
    run_ffmpeg(["-i", str(reference), "-af", "pan=stereo|c0=c0|c1=0*c0", str(stereo)])
    mixed = decode_file(stereo, DECODE_RATE)
    # One silent channel: the mix is the other channel, scaled down (ffmpeg uses 1/sqrt(2)), not lost.
    assert float(np.corrcoef(mixed, reference_pcm)[0, 1]) > 0.999
    gain = float(np.std(mixed) / np.std(reference_pcm))
    assert 0.45 < gain < 0.75


def test_blocks_stream_the_whole_file_in_order(reference: Path, reference_pcm: np.ndarray) -> None:
    blocks = list(iter_pcm_blocks(reference, DECODE_RATE, block_s=0.7))
    assert [b.size for b in blocks[:-1]] == [round(0.7 * DECODE_RATE)] * (len(blocks) - 1)
    assert np.array_equal(np.concatenate(blocks), reference_pcm)


def test_tags_come_from_the_container(reference: Path) -> None:
    tagged = encode(
        reference, "mp3", "-metadata", "title=Tëst Title", "-metadata", "artist=Some Artist",
        "-metadata", "album=First LP",
    )
    tags = probe_tags(tagged)
    assert (tags.title, tags.artist, tags.album) == ("Tëst Title", "Some Artist", "First LP")
    assert tags.duration_s == pytest.approx(DURATION_S, abs=0.05)


@pytest.mark.parametrize("extension", sorted(FORMATS))
def test_the_audio_hash_is_the_one_ffmpeg_prints_for_the_copied_stream(
    reference: Path, extension: str,
) -> None:
    """Catalogs are keyed by this digest; it was ``ffmpeg -c copy -f hash`` before it was read in
    process, and a different digest would re-ingest every file of an existing catalog."""
    tagged = encode(reference, extension, "-metadata", "title=Tagged", "-metadata", "artist=Someone")
    printed = subprocess.run(
        [ffmpeg_path(), "-nostdin", "-loglevel", "error", "-i", str(tagged), "-map", "0:a:0", "-c", "copy",
         "-f", "hash", "-hash", "sha256", "pipe:1"],
        capture_output=True, check=True,
    ).stdout.decode().strip()
    assert audio_stream_sha256(tagged) == printed.removeprefix("SHA256=")


def test_an_untagged_file_is_titled_by_its_name(reference: Path) -> None:
    tags = probe_tags(reference)
    assert (tags.title, tags.artist, tags.album) == ("reference", "", "")


@pytest.mark.parametrize("reader", ["decode", "probe"])
def test_unusable_inputs_say_what_is_wrong_with_them(tmp_path: Path, reader: str) -> None:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("these are liner notes, not audio\n" * 50)
    folder = tmp_path / "album.mp3"
    folder.mkdir()
    video = tmp_path / "video.mkv"
    run_ffmpeg(["-f", "lavfi", "-i", "color=c=black:s=32x32:d=1", str(video)])

    def read(path: Path) -> object:
        return decode_file(path, DECODE_RATE) if reader == "decode" else probe_tags(path)

    expected = {
        tmp_path / "missing.mp3": "missing.mp3: no such file",
        empty: "empty.mp3: the file is empty (0 bytes)",
        folder: "album.mp3: is a folder, not an audio file",
        text: (
            "notes.mp3: cannot decode audio" if reader == "decode" else "notes.mp3: not a readable audio file"
        ),
        video: (
            "video.mkv: cannot decode audio: the file has no audio stream"
            if reader == "decode" else "video.mkv: not a readable audio file: the file has no audio stream"
        ),
    }
    for path, message in expected.items():
        with pytest.raises(DecodeError) as raised:
            read(path)
        assert message in str(raised.value)
        assert str(raised.value).startswith(str(path.parent))  # the full path, to find the file
