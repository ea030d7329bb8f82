"""Route table and weighted selection."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from appliance.routing.selection import RouteTable, Target, pick_weighted
from appliance.settings import Backend, Model, ModelRoute, Settings


def test_route_table_resolves_upstream_names_and_weights() -> None:
    """Per-route weight overrides the backend's, and upstream names default to the model's."""
    settings = Settings(
        backends=(Backend(id="a", url="http://a/v1", weight=3), Backend(id="b", url="http://b/v1")),
        models=(
            Model(
                name="m",
                backends=(
                    ModelRoute(backend="a"),
                    ModelRoute(backend="b", upstream_model="x", weight=5),
                ),
            ),
        ),
    )
    route = RouteTable.from_settings(settings).get("m")
    assert route is not None
    assert route.targets == (Target("a", "m", 3.0), Target("b", "x", 5.0))


def test_weighted_pick_follows_weights() -> None:
    """Over many picks the split follows the weights, and weight 0 is never picked."""
    targets = [Target("a", "m", 1), Target("b", "m", 3), Target("c", "m", 0)]
    rng = random.Random(7)
    counts = Counter(pick_weighted(targets, rng).backend_id for _ in range(8000))
    assert counts["c"] == 0
    assert 0.7 < counts["b"] / 8000 < 0.8


def test_all_zero_weights_share_equally() -> None:
    """When every weight is zero, traffic still flows, spread evenly."""
    targets = [Target("a", "m", 0), Target("b", "m", 0)]
    rng = random.Random(1)
    counts = Counter(pick_weighted(targets, rng).backend_id for _ in range(2000))
    assert counts["a"] > 800
    assert counts["b"] > 800


def test_empty_targets_is_an_error() -> None:
    """Picking from nothing is a programming error, not a silent None."""
    with pytest.raises(ValueError, match="no targets"):
        pick_weighted([], random.Random())
