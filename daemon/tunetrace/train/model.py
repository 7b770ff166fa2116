"""The fingerprint network (torch): log-mel patch -> 128-d unit vector.

In the spirit of Chang et al., "Neural Audio Fingerprint for High-specific Audio Retrieval based
on Contrastive Learning" (ICASSP 2021): 1 s segments, a small strided convolutional encoder and a
projection trained with NT-Xent. Convolutions here are plain 3x3 (not separable) and the channel
widths are far smaller, to train in an hour on two CPU cores and to run at >500 windows/s.

``TorchLogMel`` reproduces ``tunetrace.audio.features.log_mel`` exactly, so training sees the features
that NumPy inference computes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from tunetrace.audio.features import MelSpec
from tunetrace.train.config import ModelConfig

SAMPLE_RATE = 8000


def window_samples(config: ModelConfig) -> int:
    """Samples per embedded window (``model.window_s``: 1 s shipped, 2 s a candidate)."""
    return round(config.window_s * SAMPLE_RATE)


def mel_spec(config: ModelConfig) -> MelSpec:
    """The NumPy front end parameters the model was trained with (also written to the sidecar)."""
    return MelSpec(
        sample_rate=SAMPLE_RATE,
        n_fft=config.n_fft,
        win_length=config.n_fft,
        hop_length=config.mel_hop,
        n_mels=config.n_mels,
        fmin_hz=config.fmin_hz,
        fmax_hz=config.fmax_hz,
        log_offset=config.log_offset,
        magnitude=True,
    )


class TorchLogMel(nn.Module):
    """(n, samples) -> (n, frames, n_mels), the same arithmetic as the NumPy ``log_mel``."""

    window: torch.Tensor
    filterbank: torch.Tensor

    def __init__(self, spec: MelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("window", torch.from_numpy(np.asarray(spec.window, np.float32)))
        self.register_buffer("filterbank", torch.from_numpy(np.asarray(spec.filterbank, np.float32)))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.unfold(-1, self.spec.win_length, self.spec.hop_length) * self.window
        spectrum = torch.fft.rfft(frames, n=self.spec.n_fft, dim=-1).abs()
        if not self.spec.magnitude:
            spectrum = spectrum * spectrum
        return torch.log(spectrum @ self.filterbank + self.spec.log_offset)


class FingerprintNet(nn.Module):
    """Strided conv stack over the (frames x mels) patch, flattened and projected to ``dimension``.

    The patch mean is removed first, so overall gain is not the network's problem. Flattening
    (instead of pooling) keeps where in time and frequency each pattern sits, which is what makes
    a fingerprint specific. ``blocks_per_stage`` > 1 adds stride-1 convolutions after each
    strided one (a deeper network at the same resolution schedule).
    """

    def __init__(self, config: ModelConfig, n_frames: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        height, width = n_frames, config.n_mels
        for channels in config.channels:
            for block in range(config.blocks_per_stage):
                layers += [
                    nn.Conv2d(in_channels, channels, 3, stride=1 if block else 2, padding=1, bias=False),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                ]
                in_channels = channels
            height, width = (height + 1) // 2, (width + 1) // 2
        self.encoder = nn.Sequential(*layers)
        self.project = nn.Linear(in_channels * height * width, config.dimension)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = log_mel - log_mel.mean(dim=(1, 2), keepdim=True)
        x = self.encoder(x.unsqueeze(1))
        return F.normalize(self.project(x.flatten(1)), dim=1)


def nt_xent(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2n unit vectors: each one's positive is its pair, the other 2n-2 are negatives."""
    z = torch.cat([anchors, positives], dim=0)
    n = anchors.shape[0]
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def hardest_negative_triplet(anchors: torch.Tensor, positives: torch.Tensor, margin: float) -> torch.Tensor:
    """Self-supervised triplet loss over unit vectors with the hardest in-batch negative.

    For each pair (a_i, p_i) the negative is the most similar other window of the batch, clean or
    degraded (``max_j!=i`` over a_i·p_j and a_i·a_j, and the same from p_i's side); the loss is
    ``relu(margin - a_i·p_i + a_i·n_i)`` averaged over both directions. Unlike NT-Xent it does not
    push every negative away, only the one that would be confused, which is what a retrieval
    with a decision threshold needs.
    """
    n = anchors.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=anchors.device)
    positive = (anchors * positives).sum(dim=1)
    hardest = []
    for own, other in ((anchors, positives), (positives, anchors)):
        across = (own @ other.T).masked_fill(eye, -2.0)
        within = (own @ own.T).masked_fill(eye, -2.0)
        hardest.append(torch.maximum(across.max(dim=1).values, within.max(dim=1).values))
    losses = [F.relu(margin - positive + negative) for negative in hardest]
    return torch.cat(losses).mean()


def contrastive_loss(
    anchors: torch.Tensor, positives: torch.Tensor, loss: str, temperature: float, margin: float
) -> torch.Tensor:
    """The training objective ``optim.loss`` names."""
    if loss == "triplet":
        return hardest_negative_triplet(anchors, positives, margin)
    return nt_xent(anchors, positives, temperature)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
