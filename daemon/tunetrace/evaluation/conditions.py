"""The named test conditions of ``tunetrace eval``: what each does to a query excerpt.

An excerpt is cut with a pre-roll (audio before its start), degraded as a whole, and then the
pre-roll is dropped, so a reverb tail or a codec's start-up is what it would be mid-broadcast.
Additive interference (noise, other music, a presenter's speech) is applied to the excerpt alone,
so its SNR is exact.  The radio conditions (speech talk-over, the broadcast chain, low-bitrate AAC,
pitch and tempo changes) are what real stations do to a recording.
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
    SPEECH = "speech"
    CODEC = "codec"
    SPEED = "speed"
    TEMPO = "tempo"
    PITCH = "pitch"
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
    """For ``SPEED`` and ``TEMPO``: 1.03 plays 3% fast (so 3% more source audio fills the excerpt)."""
    codec: degrade.Codec | None = None
    """For ``CODEC``: the processing and encoder the excerpt goes through."""
    semitones: float = 0.0
    """For ``PITCH``: the shift, tempo unchanged."""

    @property
    def needs_interferer(self) -> bool:
        """Mixes in another hold-out track (planned with the excerpts)."""
        return self.kind is Kind.MUSIC

    @property
    def needs_speech(self) -> bool:
        """Mixes in held-out speech (``tunetrace eval --speech``)."""
        return self.kind is Kind.SPEECH

    def prepare(self, segments: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        """Whole-batch processing before ``render``: one codec round trip for all codec segments."""
        if self.codec is not None and segments:
            return degrade.codec_round_trip_many(segments, sample_rate, self.codec)
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
            case Kind.CLEAN | Kind.CODEC:
                out = body
            case Kind.NOISE:
                out = degrade.white_noise(degrade.fit_length(body, n_samples), self.snr_db, rng)
            case Kind.MUSIC | Kind.SPEECH:
                if interference is None:
                    raise ValueError(f"{self.name} needs interfering audio")
                out = degrade.mix_at_snr(degrade.fit_length(body, n_samples), interference, self.snr_db)
            case Kind.SPEED:
                out = speed_change(segment, self.speed_ratio)[
                    round(preroll_samples / self.speed_ratio):
                ]
            case Kind.TEMPO:
                out = degrade.time_stretch(segment, sample_rate, self.speed_ratio)[
                    round(preroll_samples / self.speed_ratio):
                ]
            case Kind.PITCH:
                out = degrade.pitch_shift(segment, sample_rate, self.semitones)[preroll_samples:]
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
        Condition("music_0db", Kind.MUSIC, "another (hold-out) track mixed in at 0 dB SNR", snr_db=0.0),
        Condition("speech_5db", Kind.SPEECH, "held-out recorded speech over the music at 5 dB SNR",
                  snr_db=5.0),
        Condition("speech_0db", Kind.SPEECH, "held-out recorded speech over the music at equal loudness",
                  snr_db=0.0),
        Condition("mp3_64k", Kind.CODEC, "libmp3lame 64 kbit/s round trip (22.05 kHz)",
                  codec=degrade.MP3_64K),
        Condition("aac_32k", Kind.CODEC, "AAC 32 kbit/s round trip (24 kHz)", codec=degrade.AAC_32K),
        Condition("broadcast", Kind.CODEC, "5-band compressor, limiter, 15 kHz low-pass, AAC 48 kbit/s",
                  codec=degrade.BROADCAST_AAC_48K),
        Condition("speed_up_3pct", Kind.SPEED, "played 3% fast by resampling (pitch up)", speed_ratio=1.03),
        Condition("speed_down_3pct", Kind.SPEED, "played 3% slow by resampling (pitch down)",
                  speed_ratio=0.97),
        Condition("speed_up_5pct", Kind.SPEED, "played 5% fast by resampling (pitch up)", speed_ratio=1.05),
        Condition("speed_down_5pct", Kind.SPEED, "played 5% slow by resampling (pitch down)",
                  speed_ratio=0.95),
        Condition("tempo_up_5pct", Kind.TEMPO, "5% faster, pitch unchanged (time stretch)", speed_ratio=1.05),
        Condition("pitch_up_1st", Kind.PITCH, "one semitone higher, tempo unchanged (pitch shift)",
                  semitones=1.0),
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
