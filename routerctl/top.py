"""`routerctl top`'s view: rates and latencies from two scrapes of a router's metrics, joined
with its admin API's backend state (pure: the command fetches, this computes)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from routerctl.admin_client import BackendInfo

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One scrape: every counter and histogram bucket by (sample name, labels)."""

    at: float  # monotonic seconds
    values: dict[tuple[str, Labels], float]


def parse(text: str, at: float) -> Sample:
    values: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Sample(at, values)


@dataclass
class BackendRow:
    id: str
    health: str = "-"
    effective_weight: float | None = None
    inflight: int | None = None
    rps: float = 0.0
    error_pct: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ejections: int | None = None
    override: str | None = None


@dataclass
class ModelRow:
    org: str
    model: str
    rps: float = 0.0
    rate_limited_ps: float = 0.0  # 429s per second
    errors_ps: float = 0.0  # 5xx per second


@dataclass
class View:
    interval_s: float
    backends: list[BackendRow] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)


def view(before: Sample, after: Sample, backends: Sequence[BackendInfo] | None) -> View:
    """What changed between two scrapes, per second, with the admin API's backend state."""
    dt = max(after.at - before.at, 1e-6)

    def delta(name: str) -> dict[Labels, float]:
        out: dict[Labels, float] = {}
        for (sample, labels), value in after.values.items():
            if sample == name:
                out[labels] = max(value - before.values.get((sample, labels), 0.0), 0.0)
        return out

    rows = {b.id: _admin_row(b) for b in backends or ()}
    attempts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # [all, failed]
    for labels, n in delta("router_requests_total").items():
        found = dict(labels)
        counts = attempts[found["backend_id"]]
        counts[0] += n
        counts[1] += n if found.get("success") == "false" else 0.0
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for labels, n in delta("router_backend_latency_seconds_bucket").items():
        found = dict(labels)
        buckets[found["backend_id"]].append((float(found["le"]), n))
    for backend_id in attempts.keys() | buckets.keys():
        row = rows.setdefault(backend_id, BackendRow(backend_id))
        total, failed = attempts[backend_id]
        row.rps = total / dt
        row.error_pct = 100 * failed / total if total else None
        row.p50_ms, row.p99_ms = (_quantile(buckets[backend_id], q) for q in (0.5, 0.99))
    return View(dt, sorted(rows.values(), key=lambda r: r.id), _model_rows(delta, dt))


def _admin_row(b: BackendInfo) -> BackendRow:
    override = None
    if b.override is not None:
        override = f"{b.override.kind} x{b.override.factor:g} ({b.override.actor})"
    return BackendRow(
        b.id,
        health=b.health,
        effective_weight=b.effective_weight,
        inflight=b.inflight,
        ejections=b.ejections,
        override=override,
    )


def _model_rows(delta: Callable[[str], dict[Labels, float]], dt: float) -> list[ModelRow]:
    rows: dict[tuple[str, str], ModelRow] = {}
    for labels, n in delta("router_model_requests_total").items():
        found = dict(labels)
        key = (found["org"], found["model"])
        row = rows.setdefault(key, ModelRow(*key))
        row.rps += n / dt
        if found["status"] == "429":
            row.rate_limited_ps += n / dt
        elif found["status"] == "5xx":
            row.errors_ps += n / dt
    return sorted(rows.values(), key=lambda r: (-r.rps, r.org, r.model))


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile in ms from cumulative bucket counts, interpolated inside a bucket as
    Prometheus's histogram_quantile does; None without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound * 1000
            inside = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return (lower_bound + (bound - lower_bound) * inside) * 1000
        lower_bound, lower_count = bound, count
    return None
