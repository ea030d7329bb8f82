"""Live configuration, counters and request log of one mock backend (pure: no I/O imports)."""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import count
from typing import Final

from appliance.mock.directives import MAX_DELAY_MS, parse_directives
from appliance.mock.errors import MockError

REQUEST_LOG_SIZE: Final = 50
MAX_TOKENS_PER_S: Final = 1_000_000.0
_LIMITS: Final[dict[str, float]] = {
    "latency_ms": MAX_DELAY_MS,
    "fail_rate": 1.0,
    "tokens_per_s": MAX_TOKENS_PER_S,
}


@dataclass(frozen=True, slots=True)
class MockConfig:
    """Behaviour an operator can change while the server runs (POST /_mock/config)."""

    latency_ms: float = 0.0
    fail_rate: float = 0.0
    tokens_per_s: float = 0.0
    fail_status: int = 500  # the status of a fail_rate failure, e.g. 429 or 503
    # Directives applied to every inference request (its own override them by name): one
    # backend of several can hang, break or answer garbage while its peers stay healthy.
    directives: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.directives, str):
            raise TypeError("directives must be a string")
        try:
            parse_directives(self.directives)
        except MockError as exc:
            raise ValueError(exc.message) from None
        status = self.fail_status
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError("fail_status must be an integer")
        if not 400 <= status <= 599:
            raise ValueError(f"fail_status must be between 400 and 599, got {status!r}")
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            # isinstance guards JSON `true`; `not <=` also rejects NaN.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number")
            if not 0.0 <= value <= limit:
                raise ValueError(f"{name} must be between 0 and {limit:g}, got {value!r}")

    def as_dict(self) -> dict[str, float | str]:
        """The JSON form returned by /_mock/config."""
        return {
            "latency_ms": self.latency_ms,
            "fail_rate": self.fail_rate,
            "tokens_per_s": self.tokens_per_s,
            "fail_status": self.fail_status,
            "directives": self.directives,
        }

    def patched(self, patch: object) -> MockConfig:
        """A copy with the fields of a /_mock/config body applied; bad bodies raise a 400."""
        if not isinstance(patch, dict):
            raise MockError(400, "config body must be a JSON object")
        known = {*_LIMITS, "fail_status", "directives"}
        unknown = sorted(str(key) for key in patch if key not in known)
        if unknown:
            raise MockError(400, f"unknown config fields {unknown}; known: {sorted(known)}")
        merged = {**self.as_dict(), **patch}
        try:
            return MockConfig(**merged)
        except (TypeError, ValueError) as exc:
            raise MockError(400, str(exc)) from None


@dataclass(slots=True)
class MockStats:
    """Counters served by /_mock/stats."""

    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0  # the client went away mid-stream
    streams_broken: int = 0  # the `break_after` directive cut the connection on purpose
    hangs: int = 0
    failures_injected: int = 0  # `fail_rate` draws that failed (not `status` directives)
    by_path: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        return {
            "requests": self.requests,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_cancelled": self.streams_cancelled,
            "streams_broken": self.streams_broken,
            "hangs": self.hangs,
            "failures_injected": self.failures_injected,
            "by_path": dict(self.by_path),
            "by_status": dict(self.by_status),
        }


class MockState:
    """Everything the handlers of one server share; one instance per `MockBackend`."""

    def __init__(
        self,
        *,
        models: tuple[str, ...],
        config: MockConfig,
        require_key: str | None,
        seed: int,
        name: str,
    ) -> None:
        if not models or not all(models):
            raise ValueError("at least one non-empty model name is required")
        if require_key == "":
            raise ValueError("require_key must not be empty (use None to disable auth)")
        self.models = models
        self.config = config
        self.require_key = require_key
        self.name = name
        self.stats = MockStats()
        self.log: deque[dict[str, object]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._seed = seed
        # A private seeded generator: a run with fail_rate=0.3 fails the same requests every time.
        self._rng = random.Random(seed)
        self._ids = count(1)

    def next_id(self, prefix: str) -> str:
        """A response id unique within this server, e.g. `chatcmpl-mock-7`."""
        return f"{prefix}-mock-{next(self._ids)}"

    def should_fail(self) -> bool:
        """One fail_rate draw; draws only when the rate is between 0 and 1 exclusive."""
        rate = self.config.fail_rate
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self._rng.random() < rate

    def reset(self) -> None:
        """Zero the counters, empty the log and restart the fail_rate sequence."""
        self.stats = MockStats()
        self.log.clear()
        self._rng = random.Random(self._seed)
        self._ids = count(1)
