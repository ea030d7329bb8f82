"""Which backend serves a model: the route table and weighted selection (pure, no I/O)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from appliance.settings import Settings


@dataclass(frozen=True, slots=True)
class Target:
    """One way to serve a model: a backend, the model name it knows, a weight."""

    backend_id: str
    upstream_model: str
    weight: float


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    targets: tuple[Target, ...]
    strategy: str = "weighted"
    prices: tuple[float, float] = (0.0, 0.0)  # USD per 1k input, output tokens


class RouteTable:
    """Client model name -> targets, built once per config snapshot."""

    def __init__(self, routes: Mapping[str, ModelRoute]) -> None:
        self._routes = dict(routes)

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteTable:
        weights = {b.id: b.weight for b in settings.backends}
        routes = {}
        for model in settings.models:
            targets = tuple(
                Target(
                    backend_id=r.backend,
                    upstream_model=r.upstream_model or model.name,
                    weight=weights[r.backend] if r.weight is None else r.weight,
                )
                for r in model.backends
            )
            routes[model.name] = ModelRoute(
                model.name,
                targets,
                model.strategy,
                (model.input_price_per_1k, model.output_price_per_1k),
            )
        return cls(routes)

    def get(self, model: str) -> ModelRoute | None:
        return self._routes.get(model)

    def names(self) -> list[str]:
        return sorted(self._routes)


def pick_weighted(targets: Sequence[Target], rng: random.Random) -> Target:
    """A target at random in proportion to weight; all-zero weights share equally."""
    if not targets:
        raise ValueError("no targets to pick from")
    total = sum(t.weight for t in targets)
    if total <= 0:
        return targets[rng.randrange(len(targets))]
    point = rng.random() * total
    for target in targets:
        point -= target.weight
        if point < 0:
            return target
    return targets[-1]
