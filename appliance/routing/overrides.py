"""Operator overrides: degrade, drain, pin. Values and the active set (pure, no I/O).

An override is a fact an operator asserted, with who, why, when and until when. The active
set is what selection reads; expired overrides drop out by themselves at read time.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class OverrideKind(enum.StrEnum):
    DEGRADE = "degrade"  # backend weight x factor (0 < factor < 1)
    DRAIN = "drain"  # backend gets no new requests; in-flight ones finish
    PIN = "pin"  # model goes to one backend only


@dataclass(frozen=True, slots=True)
class Override:
    id: str
    kind: OverrideKind
    backend: str
    model: str | None  # set for PIN only
    factor: float  # DEGRADE: the weight factor; DRAIN: 0.0; PIN: 1.0
    reason: str
    actor: str
    created_at: float  # unix seconds
    expires_at: float | None  # unix seconds; None = until cleared

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class ActiveOverrides:
    """The overrides in force at one instant, indexed for selection."""

    __slots__ = ("_factors", "_pins", "items")

    def __init__(self, overrides: Iterable[Override], now: float) -> None:
        self.items = tuple(
            sorted((o for o in overrides if o.active(now)), key=lambda o: o.created_at)
        )
        self._factors: dict[str, float] = {}
        self._pins: dict[str, str] = {}
        for o in self.items:  # later overrides win over earlier ones of the same target
            if o.kind is OverrideKind.PIN and o.model is not None:
                self._pins[o.model] = o.backend
            else:
                self._factors[o.backend] = o.factor

    def factor(self, backend: str) -> float:
        """Weight multiplier of a backend: 1.0 normally, 0.0 when drained."""
        return self._factors.get(backend, 1.0)

    def pinned(self, model: str) -> str | None:
        return self._pins.get(model)
