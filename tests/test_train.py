"""Training recipe: front-end parity, loss, a tiny end-to-end fit with resume, ONNX export."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from tunetrace.audio.features import log_mel
from tunetrace.train.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig
from tunetrace.train.data import AudioPool

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.train

SR = 8000
TINY_MODEL = ModelConfig(n_mels=32, n_fft=256, mel_hop=128, channels=(8, 16, 16), dimension=128)


def _pool(n_tracks: int = 3, seconds: float = 10.0) -> AudioPool:
    rng = np.random.default_rng(0)
    tracks = []
    for _ in range(n_tracks):
        t = np.arange(round(seconds * SR)) / SR
        notes = rng.uniform(100, 1500, size=int(seconds * 4))
        f = np.repeat(notes, t.size // notes.size + 1)[: t.size]
        tracks.append(
            (0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR) + 0.02 * rng.standard_normal(t.size)).astype(
                np.float32
            )
        )
    return AudioPool([f"s/t{i}" for i in range(n_tracks)], tracks, [[] for _ in tracks])


def _config(tmp_path: Path, steps: int = 4) -> TrainConfig:
    return TrainConfig(
        seed=3,
        run_dir=tmp_path / "run",
        threads=1,
        checkpoint_every_s=3600,
        log_every_steps=2,
        val_every_steps=2,
        val_pairs=8,
        data=DataConfig(cache_dir=tmp_path / "cache"),
        augment=AugmentConfig(),
        model=TINY_MODEL,
        optim=OptimConfig(steps=steps, batch_pairs=8, lr=3e-3, warmup_steps=1),
    )


def test_torch_front_end_matches_numpy() -> None:
    from tunetrace.train.model import TorchLogMel, mel_spec

    spec = mel_spec(ModelConfig())
    audio = (np.random.default_rng(1).standard_normal((3, SR)) * 0.2).astype(np.float32)
    expected = log_mel(audio, spec)
    got = TorchLogMel(spec)(torch.from_numpy(audio)).numpy()
    assert got.shape == expected.shape == (3, spec.n_frames(SR), spec.n_mels)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_nt_xent_prefers_matching_pairs() -> None:
    from tunetrace.train.model import nt_xent

    z = torch.nn.functional.normalize(torch.randn(16, 128), dim=1)
    matched = nt_xent(z, z, 0.05)
    shuffled = nt_xent(z, z.roll(1, dims=0), 0.05)
    assert float(matched) < 0.1 < float(shuffled)


def test_training_steps_reduce_loss() -> None:
    from tunetrace.train.augment import PairSampler
    from tunetrace.train.loop import build_trainer

    torch.manual_seed(0)
    config = _config(Path("/nonexistent"))
    trainer = build_trainer(config, torch.device("cpu"))
    sampler = PairSampler(_pool(), config.augment, SR, 1.0, seed=1, n_irs=4)
    batch = sampler.sample(16, np.random.default_rng(0))
    first = trainer.step(batch, 3e-3)
    for _ in range(15):
        last = trainer.step(batch, 3e-3)
    assert last < 0.5 * first


def test_fit_checkpoints_resumes_and_exports(tmp_path: Path) -> None:
    from tunetrace.train.loop import fit

    config = _config(tmp_path, steps=2)
    pool = _pool()
    fit(config, train_pool=pool, val_pool=pool)
    run = config.run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and "val_top1" in metrics[-1]
    fit(config, steps=4, train_pool=pool, val_pool=pool)
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 4
    steps_logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == [2, 4]
    sidecar = json.loads((run / "fingerprint.json").read_text())
    assert sidecar["dimension"] == 128 and sidecar["front_end"]["n_mels"] == 32


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    import onnxruntime as ort

    from tunetrace.encoders.fingerprint import FingerprintEncoder
    from tunetrace.train.export import export_onnx
    from tunetrace.train.loop import build_trainer
    from tunetrace.train.model import mel_spec

    config = _config(tmp_path)
    trainer = build_trainer(config, torch.device("cpu"))
    model = trainer.model.eval()
    out = tmp_path / "fp.onnx"
    sidecar = export_onnx(model, config, out, {"note": "test"})
    audio = (np.random.default_rng(2).standard_normal((5, SR)) * 0.1).astype(np.float32)
    patches = log_mel(audio, mel_spec(TINY_MODEL))
    with torch.no_grad():
        expected = model(torch.from_numpy(patches)).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"log_mel": patches})
    np.testing.assert_allclose(got, expected, atol=1e-5)
    encoder = FingerprintEncoder(out)
    np.testing.assert_allclose(encoder.embed(audio), expected, atol=1e-5)
    assert encoder.info.encoder_id == f"fingerprint-{sidecar['sha256'][:12]}"


def test_fit_stops_on_request_with_a_checkpoint(tmp_path: Path) -> None:
    from tunetrace.train.loop import fit

    config = _config(tmp_path, steps=50)
    fit(config, train_pool=_pool(), val_pool=None, should_stop=lambda: True)
    assert torch.load(config.run_dir / "checkpoint.pt", weights_only=False)["step"] == 1


def test_learning_rate_warms_up_then_decays() -> None:
    from tunetrace.train.loop import learning_rate

    config = TrainConfig(optim=OptimConfig(steps=100, lr=1e-3, warmup_steps=10))
    rates = [learning_rate(config, step, 100) for step in range(100)]
    assert rates[0] < rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] == pytest.approx(2e-5, rel=0.05)


# ---- issue 13 candidate recipes ----------------------------------------------------------------

TINY_DEEP = TINY_MODEL.model_copy(update={"channels": (12, 24, 24), "blocks_per_stage": 2})
TINY_2S = TINY_MODEL.model_copy(update={"window_s": 2.0})
CANDIDATES = {
    "triplet": (TINY_MODEL, "triplet"),
    "wide-deep": (TINY_DEEP, "nt_xent"),
    "window-2s": (TINY_2S, "nt_xent"),
}


def _candidate(tmp_path: Path, name: str) -> TrainConfig:
    model, loss = CANDIDATES[name]
    base = _config(tmp_path)
    return base.model_copy(update={"model": model, "optim": base.optim.model_copy(update={"loss": loss})})


def test_triplet_loss_prefers_matching_pairs_and_only_hard_negatives_count() -> None:
    from tunetrace.train.model import hardest_negative_triplet

    z = torch.nn.functional.normalize(torch.randn(16, 128), dim=1)
    assert float(hardest_negative_triplet(z, z, 0.3)) == 0.0  # random 128-d vectors: cos << 0.7
    assert float(hardest_negative_triplet(z, z.roll(1, dims=0), 0.3)) > 0.3
    twins = torch.cat([z[:8], z[:8]])  # each window has an identical negative: margin violated
    assert float(hardest_negative_triplet(twins, twins, 0.3)) == pytest.approx(0.3, abs=1e-5)


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_candidate_recipe_training_steps_reduce_loss(name: str) -> None:
    from tunetrace.train.augment import PairSampler
    from tunetrace.train.loop import build_trainer

    torch.manual_seed(0)
    config = _candidate(Path("/nonexistent"), name)
    trainer = build_trainer(config, torch.device("cpu"))
    sampler = PairSampler(_pool(seconds=14.0), config.augment, SR, config.model.window_s, seed=1, n_irs=4)
    batch = sampler.sample(16, np.random.default_rng(0))
    assert batch.clean.shape == (16, round(config.model.window_s * SR))
    first = trainer.step(batch, 3e-3)
    for _ in range(15):
        last = trainer.step(batch, 3e-3)
    assert last < 0.5 * first


@pytest.mark.parametrize("name", ["wide-deep", "window-2s"])
def test_candidate_onnx_export_matches_torch_and_loads_in_the_encoder(tmp_path: Path, name: str) -> None:
    from tunetrace.encoders.fingerprint import FingerprintEncoder
    from tunetrace.train.export import export_onnx
    from tunetrace.train.loop import build_trainer
    from tunetrace.train.model import mel_spec

    config = _candidate(tmp_path, name)
    model = build_trainer(config, torch.device("cpu")).model.eval()
    out = tmp_path / "fp.onnx"
    sidecar = export_onnx(model, config, out, {"note": "test"})
    assert sidecar["window_s"] == config.model.window_s
    audio = (np.random.default_rng(2).standard_normal((5, round(config.model.window_s * SR))) * 0.1).astype(
        np.float32
    )
    with torch.no_grad():
        expected = model(torch.from_numpy(log_mel(audio, mel_spec(config.model)))).numpy()
    encoder = FingerprintEncoder(out)
    assert encoder.info.window_s == config.model.window_s
    np.testing.assert_allclose(encoder.embed(audio), expected, atol=1e-5)


def test_fit_with_talk_over_records_the_speech_it_used(tmp_path: Path) -> None:
    from tunetrace.train.loop import fit

    config = _config(tmp_path, steps=2)
    config = config.model_copy(
        update={"augment": config.augment.model_copy(update={"speech_probability": 1.0})}
    )
    speech = _pool(1, 30.0).tracks[0]
    fit(config, train_pool=_pool(), val_pool=None, speech=speech)
    sidecar = json.loads((config.run_dir / "fingerprint.json").read_text())
    assert sidecar["training"]["speech_hours"] == pytest.approx(30 / 3600, abs=0.01)
    assert sidecar["training"]["loss_function"] == "nt_xent"


def test_triplet_recipe_warms_up_with_nt_xent() -> None:
    from tunetrace.train.loop import build_trainer
    from tunetrace.train.model import hardest_negative_triplet, nt_xent

    config = _candidate(Path("/nonexistent"), "triplet")
    config = config.model_copy(
        update={"optim": config.optim.model_copy(update={"nt_xent_warmup_steps": 10})}
    )
    trainer = build_trainer(config, torch.device("cpu"))
    a = torch.nn.functional.normalize(torch.randn(8, 128), dim=1)
    p = torch.nn.functional.normalize(a + 0.3 * torch.randn(8, 128), dim=1)
    assert float(trainer.loss(a, p, step=9)) == pytest.approx(float(nt_xent(a, p, 0.05)))
    assert float(trainer.loss(a, p, step=10)) == pytest.approx(float(hardest_negative_triplet(a, p, 0.3)))
