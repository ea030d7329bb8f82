"""Retry budget: retries stay within a fraction of recent requests (pure, clock injected).

Like Finagle's and Linkerd's budgets: a bad day must not multiply the load on the backends
that are still up. Counts live in one-second buckets over a sliding window.
"""

from __future__ import annotations

_WINDOW_S = 10


class RetryBudget:
    def __init__(self, ratio: float, min_per_s: float, window_s: int = _WINDOW_S) -> None:
        self._ratio = ratio
        self._floor = min_per_s * window_s
        self._window = window_s
        self._requests = [0] * window_s
        self._retries = [0] * window_s
        self._second = 0

    def record_request(self, now: float) -> None:
        self._advance(now)
        self._requests[self._second % self._window] += 1

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget allows; False means do not retry."""
        self._advance(now)
        allowed = self._floor + self._ratio * sum(self._requests)
        if sum(self._retries) + 1 > allowed:
            return False
        self._retries[self._second % self._window] += 1
        return True

    def _advance(self, now: float) -> None:
        second = int(now)
        if second <= self._second:
            return
        for s in range(max(self._second + 1, second - self._window + 1), second + 1):
            self._requests[s % self._window] = 0
            self._retries[s % self._window] = 0
        self._second = second
