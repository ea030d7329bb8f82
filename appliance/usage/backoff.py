"""Exponential delays with jitter, for retrying a sink that refuses."""

from __future__ import annotations

import random


class Backoff:
    """Exponential delays with jitter between `first_s` and `max_s`; reset() after a success."""

    def __init__(
        self, first_s: float = 0.1, max_s: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self._first = first_s
        self._max = max_s
        self._rng = rng or random.Random()
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self._max, self._first * 2.0 ** min(self._failures, 32))
        self._failures += 1
        # Half fixed, half random: replicas that failed together do not retry together.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self._failures = 0
