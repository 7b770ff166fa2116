"""Capped, jittered exponential backoff: how every reconnect loop (sources, MQTT) waits.

One policy for all external services, so an operator reads one rule: the delay doubles per
failure up to a cap, drawn from ``[(1 - jitter) * d, d]`` so many daemons restarted together do not
hammer a recovering server in lockstep, and resets after a session that worked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    initial_s: float
    max_s: float
    jitter: float = 0.5
    """The delay is drawn uniformly from ``[(1 - jitter) * d, d]`` so restarted peers spread out."""


class Backoff:
    """Capped, jittered exponential backoff; ``reset()`` after a session that delivered audio."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay_s(self) -> float:
        ceiling = min(self._policy.max_s, self._policy.initial_s * 2.0 ** min(self._attempt, 30))
        self._attempt += 1
        return self._rng.uniform((1.0 - self._policy.jitter) * ceiling, ceiling)

    def reset(self) -> None:
        self._attempt = 0
