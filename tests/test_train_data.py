"""Issue 13 training data: package sources, queen.1c speech, precomputed variants, talk-over
pairs, stretched copies, candidate recipe files (real ffmpeg; no torch needed)."""

from __future__ import annotations

import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tunetrace.audio.decode import _tool
from tunetrace.errors import ConfigError, DecodeError
from tunetrace.evaluation import degrade
from tunetrace.evaluation.packages import HELD_OUT_SPEECH
from tunetrace.train import augment
from tunetrace.train.config import AugmentConfig, load_train_config
from tunetrace.train.data import (
    QUEEN_ENTRY,
    QUEEN_HEADER,
    VARIANTS,
    AudioPool,
    SourceSpec,
    Stretched,
    iter_source_files,
    load_pool,
    load_speech,
    make_variant,
    prepare_source,
    prepare_variant_copies,
    read_queen_table,
)

SR = 8000
REPO = Path(__file__).resolve().parents[1]
OFF = AugmentConfig(
    noise_probability=0,
    reverb_probability=0,
    eq_probability=0,
    codec_probability=0,
    speed_max=0,
    offset_max_s=0,
    gain_db=(0.0, 0.0),
)
"""Every augmentation off: the degraded side is the anchor, so one change can be checked alone."""


def _tones(seconds: float, seed: int) -> np.ndarray:
    """A melody of random notes: every moment differs, so misalignment shows."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    notes = np.repeat(rng.uniform(150, 1500, size=int(seconds * 8) + 1), SR // 8)[: t.size]
    return (0.3 * np.sin(2 * np.pi * np.cumsum(notes) / SR)).astype(np.float32)


def _encode(audio: np.ndarray, out: Path, *args: str) -> None:
    subprocess.run(
        [_tool("ffmpeg"), "-nostdin", "-loglevel", "error", "-f", "f32le", "-ar", str(SR), "-ac", "1",
         "-i", "pipe:0", *args, str(out)],
        input=audio.astype("<f4").tobytes(), check=True, capture_output=True, timeout=60,
    )


# ---- sources -----------------------------------------------------------------------------------


def test_zip_members_are_chosen_by_include_and_exclude_even_without_a_suffix(tmp_path: Path) -> None:
    song = tmp_path / "song.ogg"
    _encode(_tones(6.0, 1), song, "-c:a", "libvorbis")
    archive = tmp_path / "public.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.write(song, "audio/music/theme")  # no suffix, as one soundtrack ships them
        out.write(song, "audio/music/theme.tags")
        out.write(song, "audio/sfx/click.ogg")
    source = SourceSpec("zipped", archive, include=("audio/music/*",), exclude=("*.tags",))
    assert [name for name, _ in iter_source_files(source)] == ["audio_music_theme"]
    tracks = prepare_source(source, tmp_path / "cache", SR)
    assert [t.name for t in tracks] == ["audio_music_theme.npy"]
    assert np.load(tracks[0]).size == pytest.approx(6 * SR, abs=SR // 10)


def test_short_files_are_skipped_once_and_remembered(tmp_path: Path) -> None:
    folder = tmp_path / "music"
    folder.mkdir()
    _encode(_tones(6.0, 2), folder / "long.ogg", "-c:a", "libvorbis")
    _encode(_tones(2.0, 3), folder / "jingle.ogg", "-c:a", "libvorbis")
    source = SourceSpec("m", folder, min_s=5.0)
    assert [t.stem for t in prepare_source(source, tmp_path / "cache", SR)] == ["long"]
    assert (tmp_path / "cache" / "m" / "jingle.short").exists()
    assert [t.stem for t in prepare_source(source, tmp_path / "cache", SR)] == ["long"]


def _queen_file(path: Path, clips: list[bytes], names: list[str]) -> None:
    """A rebuilt queen.1c: QTBL header, the entry table, then the clips' bytes."""
    table_end = QUEEN_HEADER.size + QUEEN_ENTRY.size * len(clips)
    header = QUEEN_HEADER.pack(b"QTBL", b"CEM10\0", b"\0\0", 1, len(clips))
    entries, offset = [], table_end
    for name, clip in zip(names, clips, strict=True):
        entries.append(QUEEN_ENTRY.pack(name.encode().ljust(12, b"\0"), 1, offset, len(clip)))
        offset += len(clip)
    path.write_bytes(header + b"".join(entries) + b"".join(clips))


def test_queen_speech_clips_are_read_from_the_resource_table(tmp_path: Path) -> None:
    clips = []
    for seed in (4, 5):
        mp3 = tmp_path / f"clip{seed}.mp3"
        _encode(_tones(3.0, seed), mp3, "-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3")
        clips.append(mp3.read_bytes())
    resource = tmp_path / "queen.1c"
    names = ["000001P1.SB", "000002J1.SB", "ROOM1.PCX"]
    _queen_file(resource, [*clips, b"not sound"], names)
    assert [e.name for e in read_queen_table(resource.read_bytes())] == names
    tracks = prepare_source(SourceSpec("queen", resource, min_s=1.0), tmp_path / "cache", SR)
    assert [t.stem for t in tracks] == ["speech000"]
    assert np.load(tracks[0]).size == pytest.approx(6 * SR, abs=SR // 5)  # both clips, back to back


def test_a_file_that_is_not_queen_1c_is_refused_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="QTBL"):
        read_queen_table(b"RIFF....")
    truncated = tmp_path / "queen.1c"
    _queen_file(truncated, [b"x" * 100], ["A.SB"])
    with pytest.raises(DecodeError, match="past the end"):
        read_queen_table(truncated.read_bytes()[:-50])


# ---- variants ----------------------------------------------------------------------------------


def test_a_tempo_variant_is_made_in_chunks_at_its_time_scale_and_loaded_memory_mapped(tmp_path: Path) -> None:
    audio = _tones(70.0, 6)  # longer than one 60 s chunk
    cache = tmp_path / "cache"
    (cache / "s").mkdir(parents=True)
    np.save(cache / "s" / "t.npy", audio)
    variant = VARIANTS["tempo_up_5pct"]
    prepare_variant_copies([cache / "s" / "t.npy"], cache, SR, variant)
    pool = load_pool(cache, ["s"], variants=["tempo_up_5pct"])
    (copy,) = pool.stretched[0]
    assert copy.time_scale == pytest.approx(1 / 1.05)
    assert copy.audio.size == round(audio.size / 1.05)
    assert isinstance(copy.audio, np.memmap)
    # The 2nd chunk starts where the clean track's 60 s mark falls in the stretched copy: the
    # note playing there is the same (compare short-time spectra around that point).
    def spectrum(x: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.rfft(x * np.hanning(x.size)))

    clean = spectrum(audio[round(62.0 * SR) : round(62.0 * SR) + 512])
    shifted = spectrum(copy.audio[round(62.0 * SR / 1.05) : round(62.0 * SR / 1.05) + 512])
    assert np.corrcoef(clean, shifted)[0, 1] > 0.8


@pytest.mark.parametrize("name", ["opus_24k", "aac_32k", "broadcast", "pitch_up_1st"])
def test_codec_and_pitch_variants_keep_length_and_timing(name: str) -> None:
    audio = _tones(8.0, 7)
    copy = make_variant(audio, SR, VARIANTS[name])
    assert copy.shape == audio.shape
    envelope = [degrade.rms(audio[i : i + SR // 8]) for i in range(0, audio.size, SR // 8)]
    assert min(envelope) > 0.1  # the tones never stop, so a shift would show only in pitch
    if name == "pitch_up_1st":
        # One semitone up: the strongest frequency of a steady note moves by 2**(1/12).
        piece = slice(SR, SR + SR // 8)
        f_clean = np.argmax(np.abs(np.fft.rfft(audio[piece])))
        f_copy = np.argmax(np.abs(np.fft.rfft(copy[piece])))
        assert f_copy / f_clean == pytest.approx(2 ** (1 / 12), rel=0.04)
    else:
        assert np.corrcoef(audio[SR:-SR], copy[SR:-SR])[0, 1] > 0.5  # aligned, not shifted


# ---- pairs -------------------------------------------------------------------------------------


def test_talk_over_mixes_speech_at_the_drawn_snr() -> None:
    speech = _tones(20.0, 8) * np.float32(0.5)  # any audio stands in for a presenter here
    pool = AudioPool(["a/x"], [_tones(15.0, 9)], [[]])
    config = OFF.model_copy(update={"speech_probability": 1.0, "speech_snr_db": (-5.0, -5.0)})
    sampler = augment.PairSampler(pool, config, SR, 1.0, seed=1, n_irs=2, speech=speech)
    batch = sampler.sample(6, np.random.default_rng(0))
    for clean, degraded in zip(batch.clean, batch.degraded, strict=True):
        assert degrade.snr_db(clean, degraded) == pytest.approx(-5.0, abs=0.01)


def test_a_stretched_copy_is_read_at_its_time_scale() -> None:
    """A copy at time scale 1/1.05 holds clean sample s at s/1.05: the degraded window starts on
    the anchor's first sample and runs 5 % faster through the clean track."""
    clean = _tones(20.0, 10)
    scale = 1 / 1.05
    copy = np.interp(np.arange(round(clean.size * scale)) / scale, np.arange(clean.size), clean)
    pool = AudioPool(["a/x"], [clean], [[]], [[Stretched(copy.astype(np.float32), scale)]])
    config = OFF.model_copy(update={"stretch_probability": 1.0})
    sampler = augment.PairSampler(pool, config, SR, 1.0, seed=1, n_irs=2)
    batch = sampler.sample(4, np.random.default_rng(1))
    for anchor, degraded in zip(batch.clean, batch.degraded, strict=True):
        start = int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(clean, 8)
                                          == anchor[:8], axis=1))[0])
        expected = np.interp(start + np.arange(SR) / scale, np.arange(clean.size), clean)
        unscaled = clean[start : start + SR]  # what reading the copy as if untimed would give
        assert np.corrcoef(degraded, expected)[0, 1] > 0.98  # two linear interpolations apart
        assert np.corrcoef(degraded, unscaled)[0, 1] < 0.5


def test_speech_stream_trims_the_silence_around_clips(tmp_path: Path) -> None:
    (tmp_path / "sp").mkdir()
    clip = np.concatenate([np.zeros(SR, np.float32), _tones(1.0, 11), np.zeros(SR, np.float32)])
    np.save(tmp_path / "sp" / "a.npy", clip)
    np.save(tmp_path / "sp" / "b.npy", clip)
    stream = load_speech(tmp_path, ["sp"], SR, max_gap_s=0.25)
    assert stream.size == pytest.approx(2 * SR + 2 * SR // 4, abs=20)


# ---- recipe files ------------------------------------------------------------------------------


def test_candidate_recipes_extend_the_base_and_change_only_their_point() -> None:
    base = load_train_config(REPO / "config" / "train.yaml")
    assert base.data.speech_sources and len(base.data.train_sources) == 16
    candidates = {p.stem: load_train_config(p) for p in (REPO / "config" / "train-candidates").glob("*.yaml")}
    assert candidates.keys() == {"deep", "wide-deep", "triplet", "window-2s", "music-mix"}
    assert candidates["deep"].model.blocks_per_stage == candidates["wide-deep"].model.blocks_per_stage == 2
    assert candidates["deep"].model.channels == base.model.channels != candidates["wide-deep"].model.channels
    assert candidates["triplet"].optim.loss == "triplet"
    assert candidates["window-2s"].model.window_s == 2.0
    mix = candidates["music-mix"]  # the base run fine-tuned with more music in the interference
    assert mix.augment == base.augment.model_copy(update={"noise_kinds": ("music", "music", "white", "pink")})
    assert mix.model == base.model and mix.optim.steps > base.optim.steps
    for config in candidates.values():
        assert config.data == base.data
        assert config.augment == base.augment or config is mix
        assert config.run_dir != base.run_dir


def test_the_matched_window_comparison_differs_only_in_the_window_length() -> None:
    """Session 14's 1 s against 2 s comparison (docs/models.md): same data, seed and steps."""
    folder = REPO / "config" / "train-candidates" / "matched"
    one, two = load_train_config(folder / "window-1s.yaml"), load_train_config(folder / "window-2s.yaml")
    assert (one.model.window_s, two.model.window_s) == (1.0, 2.0)
    assert two.model_copy(update={"model": one.model, "run_dir": one.run_dir}) == one
    assert one.run_dir != two.run_dir


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (f"data: {{speech_sources: [{{name: nl, package: {HELD_OUT_SPEECH}, path: usr/share}}]}}",
         "held-out speech"),
        ("data: {speech_sources: [{name: nl, path: /var/cache/tunetrace-packages/"
         f"{HELD_OUT_SPEECH}/usr/share}}]}}", "held-out speech"),
        ("data: {train_sources: [{name: a, package: warzone2100-music, path: music}], "
         "val_sources: [{name: b, package: warzone2100-music, path: music}]}", "never both"),
        ("data: {train_sources: [{name: x, package: naev-data, path: /usr/share/naev}]}",
         "must be relative to the unpacked package"),
        ("data: {train_sources: [{name: x, path: music}]}", "must be absolute"),
        ("data: {variants: [tape_hiss]}", "variants: unknown tape_hiss"),
        ("extends: loop.yaml", "loops back"),
    ],
)
def test_bad_training_configs_name_the_problem(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_train_config(path)


def test_struct_layout_matches_the_rebuilt_queen_format() -> None:
    """ScummVM's rebuilt table: 4+6+2+1+2 header bytes, 12+1+4+4 per entry (big-endian)."""
    assert (QUEEN_HEADER.size, QUEEN_ENTRY.size) == (15, 21)
    assert struct.calcsize(">12sBII") == QUEEN_ENTRY.size


def test_train_prepare_through_the_cli_names_an_unknown_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tunetrace.cli.main import main

    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{cache_dir: {tmp_path / 'cache'}}}\n")
    assert main(["train", "--config", str(config), "prepare", "--sources", "nope"]) == 1
    assert "--sources: unknown source(s) nope" in caplog.text


def test_train_prepare_through_the_cli_decodes_the_chosen_sources_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tunetrace.cli.main import main

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _encode(_tones(6.0, 12), tmp_path / name / "song.ogg", "-c:a", "libvorbis")
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data:\n  cache_dir: {tmp_path / 'cache'}\n  train_sources:\n"
        f"    - {{name: a, path: {tmp_path / 'a'}}}\n    - {{name: b, path: {tmp_path / 'b'}}}\n"
    )
    caplog.set_level("INFO")
    assert main(["train", "--config", str(config), "prepare", "--sources", "b"]) == 0
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["b"]
    assert "b: 1 tracks cached, 0.00 h" in caplog.text
