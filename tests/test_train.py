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
