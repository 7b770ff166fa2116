"""The named test conditions of ``tunetrace eval``: what each does to a query excerpt.

An excerpt is cut with a pre-roll (audio before its start), degraded as a whole, and then the
pre-roll is dropped, so a reverb tail or a codec's start-up is what it would be mid-broadcast.
Additive interference (noise, other music) is applied to the excerpt alone, so its SNR is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from tunetrace.audio.resample import speed_change
from tunetrace.evaluation import degrade


class Kind(Enum):
    CLEAN = "clean"
    NOISE = "noise"
    MUSIC = "music"
    MP3 = "mp3"
    SPEED = "speed"
    REVERB = "reverb"
    TELEPHONE = "telephone"


@dataclass(frozen=True)
class Condition:
    name: str
    kind: Kind
    description: str
    snr_db: float = 0.0
    """For ``NOISE`` and ``MUSIC``: excerpt power over interference power."""
    speed_ratio: float = 1.0
    """For ``SPEED``: 1.03 plays 3% fast (so 3% more source audio fills the excerpt)."""
    bitrate_kbps: int = 64

    @property
    def needs_interferer(self) -> bool:
        return self.kind is Kind.MUSIC

    def prepare(self, segments: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        """Whole-batch processing before ``render``: one codec round trip for all MP3 segments."""
        if self.kind is Kind.MP3 and segments:
            return degrade.mp3_round_trip_many(segments, sample_rate, self.bitrate_kbps)
        return list(segments)

    def render(
        self,
        segment: np.ndarray,
        preroll_samples: int,
        n_samples: int,
        sample_rate: int,
        rng: np.random.Generator,
        interference: np.ndarray | None = None,
    ) -> np.ndarray:
        """The query as the recogniser hears it: ``n_samples`` of degraded audio.

        ``segment`` is the pre-roll plus the source audio (already through ``prepare``).
        """
        body = segment[preroll_samples:]
        match self.kind:
            case Kind.CLEAN | Kind.MP3:
                out = body
            case Kind.NOISE:
                out = degrade.white_noise(degrade.fit_length(body, n_samples), self.snr_db, rng)
            case Kind.MUSIC:
                if interference is None:
                    raise ValueError(f"{self.name} needs interfering music")
                out = degrade.mix_at_snr(degrade.fit_length(body, n_samples), interference, self.snr_db)
            case Kind.SPEED:
                out = speed_change(segment, self.speed_ratio)[
                    round(preroll_samples / self.speed_ratio):
                ]
            case Kind.REVERB:
                response = degrade.synthetic_impulse_response(sample_rate, rng)
                out = degrade.reverb(segment, response)[preroll_samples:]
            case Kind.TELEPHONE:
                out = degrade.telephone(segment, sample_rate)[preroll_samples:]
        return degrade.fit_length(out, n_samples)


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("clean", Kind.CLEAN, "the excerpt as decoded"),
        Condition("noise_10db", Kind.NOISE, "white noise at 10 dB SNR", snr_db=10.0),
        Condition("noise_0db", Kind.NOISE, "white noise at 0 dB SNR", snr_db=0.0),
        Condition("music_5db", Kind.MUSIC, "another (hold-out) track mixed in at 5 dB SNR", snr_db=5.0),
        Condition("mp3_64k", Kind.MP3, "libmp3lame 64 kbit/s round trip (22.05 kHz)", bitrate_kbps=64),
        Condition("speed_up_3pct", Kind.SPEED, "played 3% fast by resampling (pitch up)", speed_ratio=1.03),
        Condition("speed_down_3pct", Kind.SPEED, "played 3% slow by resampling (pitch down)",
                  speed_ratio=0.97),
        Condition("reverb", Kind.REVERB, "synthetic room, RT60 0.4-0.6 s (seeded)"),
        Condition("telephone", Kind.TELEPHONE, "300-3400 Hz band at 8 kHz sampling"),
    )
}
"""Every condition ``--conditions`` accepts, in report order."""


def parse_conditions(text: str) -> list[Condition]:
    """``clean,noise_0db`` -> conditions; ``all`` -> every one.  Unknown names are an error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(CONDITIONS.values())
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown condition(s): {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(CONDITIONS)} or 'all'"
        )
    return [CONDITIONS[n] for n in names]
