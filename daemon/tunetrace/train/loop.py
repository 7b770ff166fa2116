"""The training loop: seeded, resumable, logged, checkpointed; uses a GPU when there is one.

Batch ``k`` is drawn from ``numpy.random.default_rng([seed, k])``, so a resumed run sees exactly
the batches an uninterrupted one would have, and the next batch is prepared on a helper thread
while the current one trains (NumPy and torch both release the GIL in their heavy loops).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm import tqdm

from tunetrace.train.augment import PairBatch, PairSampler
from tunetrace.train.config import TrainConfig
from tunetrace.train.data import AudioPool, load_pool, load_speech, refresh_codec_copies
from tunetrace.train.export import export_onnx
from tunetrace.train.model import (
    SAMPLE_RATE,
    FingerprintNet,
    TorchLogMel,
    contrastive_loss,
    mel_spec,
    window_samples,
)

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the peak (a pure function of the step)."""
    peak = config.optim.lr
    warmup = config.optim.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return peak * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class Trainer:
    config: TrainConfig
    model: FingerprintNet
    front_end: TorchLogMel
    optimizer: torch.optim.Optimizer
    device: torch.device

    def embed(self, audio: np.ndarray) -> torch.Tensor:
        vectors: torch.Tensor = self.model(self.front_end(torch.from_numpy(audio).to(self.device)))
        return vectors

    def loss(self, anchors: torch.Tensor, positives: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """``optim.loss``; NT-Xent instead during the first ``optim.nt_xent_warmup_steps`` steps."""
        optim = self.config.optim
        name = "nt_xent" if step is not None and step < optim.nt_xent_warmup_steps else optim.loss
        return contrastive_loss(anchors, positives, name, optim.temperature, optim.margin)

    def step(self, batch: PairBatch, lr: float, step: int | None = None) -> float:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        both = np.concatenate([batch.clean, batch.degraded])
        z = self.embed(both)
        n = batch.clean.shape[0]
        loss = self.loss(z[:n], z[n:], step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return float(loss.item())

    @torch.no_grad()
    def validate(self, batch: PairBatch) -> dict[str, float]:
        """Top-1 accuracy of each degraded window among all clean ones (a retrieval proxy)."""
        self.model.eval()
        clean = torch.cat([self.embed(c) for c in np.array_split(batch.clean, 4)])
        degraded = torch.cat([self.embed(d) for d in np.array_split(batch.degraded, 4)])
        similarity = degraded @ clean.T
        top1 = (similarity.argmax(dim=1) == torch.arange(len(clean), device=clean.device)).float().mean()
        loss = self.loss(clean, degraded)
        return {"val_top1": float(top1), "val_loss": float(loss)}


def build_trainer(config: TrainConfig, device: torch.device) -> Trainer:
    spec = mel_spec(config.model)
    model = FingerprintNet(config.model, spec.n_frames(window_samples(config.model))).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    return Trainer(config, model, TorchLogMel(spec).to(device), optimizer, device)


def save_checkpoint(trainer: Trainer, path: Path, step: int, training: dict[str, Any]) -> None:
    state = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "step": step,
        "training": training,
        "config": trainer.config.model_dump(mode="json"),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _codec_tags(config: TrainConfig) -> list[str]:
    return [text.replace(":", "") for text in config.data.codecs]


def _pool_summary(pool: AudioPool) -> dict[str, Any]:
    return {
        "tracks": len(pool.tracks),
        "hours": round(pool.total_samples / SAMPLE_RATE / 3600, 2),
        "with_codec_copies": sum(1 for c in pool.codec_copies if c),
        "with_stretched_copies": sum(1 for c in pool.stretched if c),
    }


def _load_pools(
    config: TrainConfig, train_pool: AudioPool | None, val_pool: AudioPool | None
) -> tuple[AudioPool, AudioPool | None]:
    cache = config.data.cache_dir
    if train_pool is None:
        names = [s.name for s in config.data.train_sources]
        train_pool = load_pool(cache, names, _codec_tags(config), list(config.data.variants))
    if val_pool is None and config.data.val_sources:
        val_pool = load_pool(cache, [s.name for s in config.data.val_sources])
    return train_pool, val_pool


def _validation_batch(config: TrainConfig, val_pool: AudioPool | None) -> PairBatch | None:
    """A fixed set of degraded validation pairs, identical for every run with the same seed."""
    if val_pool is None:
        return None
    sampler = PairSampler(val_pool, config.augment, SAMPLE_RATE, config.model.window_s, seed=config.seed + 1)
    return sampler.sample(config.val_pairs, np.random.default_rng([config.seed, 999_999_999]))


def _resume(trainer: Trainer, checkpoint: Path, fresh: bool) -> int:
    """Load ``checkpoint`` into ``trainer`` unless ``fresh``; returns the step to continue from."""
    if fresh or not checkpoint.exists():
        return 0
    state = torch.load(checkpoint, map_location=trainer.device, weights_only=False)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resumed from %s at step %d", checkpoint, int(state["step"]))
    return int(state["step"])


@dataclass
class _Progress:
    """What the loop carries between steps: loss accumulator, timers, the last metrics."""

    started: float
    last_checkpoint: float
    losses: list[float]
    metrics: dict[str, Any]
    validation: dict[str, float] = field(default_factory=dict)
    """The latest validation metrics (recorded in checkpoints and the sidecar)."""


def fit(
    config: TrainConfig,
    steps: int | None = None,
    fresh: bool = False,
    train_pool: AudioPool | None = None,
    val_pool: AudioPool | None = None,
    should_stop: Callable[[], bool] | None = None,
    speech: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train until ``steps`` (default ``optim.steps``); returns the last logged metrics.

    ``steps`` may differ from the value a checkpoint was started with: the cosine schedule is a
    function of (step, total), so shortening it on resume simply anneals sooner. When
    ``should_stop()`` turns true (SIGTERM/SIGINT in the CLI) the loop checkpoints and returns.
    ``speech`` (default: loaded from ``data.speech_sources``) is talked over the music.
    """
    total_steps = steps or config.optim.steps
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config.run_dir.mkdir(parents=True, exist_ok=True)
    train_pool, val_pool = _load_pools(config, train_pool, val_pool)
    if speech is None and config.data.speech_sources and config.augment.speech_probability > 0:
        speech = load_speech(config.data.cache_dir, [s.name for s in config.data.speech_sources], SAMPLE_RATE)
    sampler = PairSampler(
        train_pool, config.augment, SAMPLE_RATE, config.model.window_s, seed=config.seed, speech=speech
    )
    val_batch = _validation_batch(config, val_pool)
    trainer = build_trainer(config, device)
    checkpoint = config.run_dir / CHECKPOINT_NAME
    start_step = _resume(trainer, checkpoint, fresh)
    training: dict[str, Any] = {
        "train": _pool_summary(train_pool),
        "train_sources": [s.name for s in config.data.train_sources],
        "val_sources": [s.name for s in config.data.val_sources],
        "seed": config.seed,
        "batch_pairs": config.optim.batch_pairs,
        "temperature": config.optim.temperature,
        "loss_function": config.optim.loss,
        "speech_sources": [s.name for s in config.data.speech_sources] if speech is not None else [],
        "speech_hours": round(speech.size / SAMPLE_RATE / 3600, 2) if speech is not None else 0.0,
        "variants": list(config.data.variants),
    }
    log.info("training on %s (%s), steps %d -> %d", device, training["train"], start_step, total_steps)
    now = time.monotonic()
    state = _Progress(now, now, [], {})

    def draw(step: int) -> PairBatch:
        return sampler.sample(config.optim.batch_pairs, np.random.default_rng([config.seed, step]))

    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        (config.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as sink,
        tqdm(total=total_steps, initial=start_step, desc="train", mininterval=30, unit="step") as progress,
    ):
        pending: Future[PairBatch] | None = (
            pool.submit(draw, start_step) if start_step < total_steps else None
        )
        for step in range(start_step, total_steps):
            assert pending is not None
            batch = pending.result()
            pending = pool.submit(draw, step + 1) if step + 1 < total_steps else None
            lr = learning_rate(config, step, total_steps)
            state.losses.append(trainer.step(batch, lr, step))
            progress.update(1)
            done = step + 1
            last = done == total_steps or (should_stop is not None and should_stop())
            if done % config.log_every_steps == 0 or last:
                validate = val_batch is not None and (done % config.val_every_steps == 0 or last)
                _log_metrics(trainer, state, done, lr, val_batch=val_batch if validate else None, sink=sink)
            if time.monotonic() - state.last_checkpoint > config.checkpoint_every_s or last:
                training.update(step=done, loss=state.metrics.get("loss"), **state.validation)
                _checkpoint(trainer, checkpoint, done, training)
                state.last_checkpoint = time.monotonic()
                added = refresh_codec_copies(
                    train_pool, config.data.cache_dir, _codec_tags(config), list(config.data.variants)
                )
                if added:
                    log.info("picked up %d new codec copies", added)
            if last:
                break
    if pending is not None:
        pending.cancel()
    return state.metrics


def _log_metrics(
    trainer: Trainer, state: _Progress, step: int, lr: float, *, val_batch: PairBatch | None, sink: IO[str]
) -> None:
    state.metrics = {
        "step": step,
        "loss": float(np.mean(state.losses)),
        "lr": lr,
        "elapsed_s": round(time.monotonic() - state.started, 1),
    }
    state.losses = []
    if val_batch is not None:
        state.validation = trainer.validate(val_batch)
        state.metrics.update(state.validation)
    sink.write(json.dumps(state.metrics) + "\n")
    sink.flush()
    log.info("%s", state.metrics)


def _checkpoint(trainer: Trainer, checkpoint: Path, step: int, training: dict[str, Any]) -> None:
    """Save the resumable state and export ONNX next to it (cheap: a few seconds)."""
    config = trainer.config
    save_checkpoint(trainer, checkpoint, step, training)
    export_onnx(trainer.model, config, config.export_path or config.run_dir / "fingerprint.onnx", training)
    trainer.model.to(trainer.device)
    log.info("checkpoint at step %d -> %s", step, checkpoint)
