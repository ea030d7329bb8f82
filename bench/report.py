"""Turn results into the table, the routerctl ratios and the DESIGN.md budget check."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from loadgen import Result
from soak import Soak
from ttfb import Probe

TARGETS = (
    "direct",
    "noop",
    "routerctl+none",
    "routerctl",
    "routerctl+kafka",
    "routerctl+redis",
    "routerctl+full",
    "routerctl+full-hypercorn",
    "noop-2w",
    "routerctl+full-2w",
)
# The rows under test; they get the API key. routerctl publishes usage to the default file
# sink, routerctl+none to sink "none", routerctl+kafka to Kafka (Tansu); all use the outbox.
# routerctl+full has every feature on: Redis limits (rpm, tpm, concurrency) and a budget,
# active probes, the Kafka sink, metrics and the access log (tracing off). The -2w rows are
# the do-nothing proxy and routerctl+full with two worker processes each (`[server] workers`).
# routerctl+full-hypercorn is routerctl+full on `[server] engine = "hypercorn"`.
ROUTERS = (
    "routerctl+none",
    "routerctl",
    "routerctl+kafka",
    "routerctl+redis",
    "routerctl+full",
    "routerctl+full-hypercorn",
    "routerctl+full-2w",
)
FULL = ("routerctl+full", "routerctl+full-hypercorn", "routerctl+full-2w")  # every feature on
LIMITED = ("routerctl+redis", *FULL)  # answers carry x-ratelimit-*
_LABELS = {
    "direct": "direct (nginx)",
    "noop": "do-nothing proxy",
    "routerctl+none": "routerctl+none",
    "routerctl": "routerctl",
    "routerctl+kafka": "routerctl+kafka",
    "routerctl+redis": "routerctl+redis",
    "routerctl+full": "routerctl+full",
    "routerctl+full-hypercorn": "routerctl+full on hypercorn",
    "noop-2w": "do-nothing proxy, 2 workers",
    "routerctl+full-2w": "routerctl+full, 2 workers",
}
# (subject, baseline) compared in each cell. routerctl+redis vs routerctl is what Redis limits
# cost; routerctl+kafka and routerctl vs routerctl+none are what publishing the outbox's
# records to Kafka and to the file cost, against discarding them (sink "none").
PAIRS = (
    ("routerctl+full", "direct"),
    ("routerctl+full", "noop"),
    ("routerctl+full", "routerctl+full-hypercorn"),
    ("routerctl", "direct"),
    ("routerctl", "noop"),
    ("routerctl+redis", "direct"),
    ("routerctl+redis", "noop"),
    ("routerctl+redis", "routerctl"),
    ("routerctl+kafka", "routerctl+none"),
    ("routerctl", "routerctl+none"),
    ("routerctl+full-2w", "noop-2w"),
    ("routerctl+full-2w", "routerctl+full"),
    ("noop-2w", "noop"),
)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One router row (`subject`) against one baseline in one (mode, concurrency) cell."""

    mode: str
    concurrency: int
    subject: str
    baseline: str
    throughput_ratio: float
    added_p50_ms: float
    added_p99_ms: float


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    target: str  # the router row the line is about
    rule: str
    measured: str
    passed: bool | None  # None: not measurable in this run


def _cells(results: Iterable[Result]) -> dict[tuple[str, int], dict[str, Result]]:
    cells: dict[tuple[str, int], dict[str, Result]] = {}
    for result in results:
        cells.setdefault((result.mode, result.concurrency), {})[result.target] = result
    return cells


def compare(results: list[Result]) -> list[Comparison]:
    comparisons: list[Comparison] = []
    for (mode, concurrency), cell in _cells(results).items():
        for subject, baseline in PAIRS:
            router, base = cell.get(subject), cell.get(baseline)
            if router is None or base is None or not (router.ok and base.ok) or not base.rps:
                continue
            comparisons.append(
                Comparison(
                    mode,
                    concurrency,
                    subject,
                    baseline,
                    throughput_ratio=router.rps / base.rps,
                    added_p50_ms=router.p50_ms - base.p50_ms,
                    added_p99_ms=router.p99_ms - base.p99_ms,
                )
            )
    return comparisons


def budget(
    results: list[Result],
    comparisons: list[Comparison],
    probes: dict[str, Probe] | None = None,
    soak: Soak | None = None,
) -> list[BudgetCheck]:
    """DESIGN.md's performance budget (the goals of the hot-path issue), as far as this run
    measures it: for routerctl+full, else the Redis-limited row, else plain routerctl."""
    ran = {r.target for r in results if r.ok}
    target = next((t for t in ("routerctl+full", "routerctl+redis", "routerctl") if t in ran), "")
    if not target:
        return []
    found = {(c.mode, c.concurrency, c.subject, c.baseline): c for c in comparisons}
    cells = _cells(results)
    checks = [_throughput(target, mode, found) for mode in ("chat", "stream")]
    if "routerctl+full-2w" in ran:
        checks += [
            _throughput("routerctl+full-2w", m, found, "noop-2w") for m in ("chat", "stream")
        ]
    checks += _latency(target, cells)
    checks.append(_ttfb(target, probes or {}))
    for mode in ("chat", "stream"):
        c = found.get((mode, 64, "routerctl+redis", "routerctl"))
        checks.append(
            BudgetCheck(
                "routerctl+redis",
                f"{mode} c=64 routerctl+redis >= 0.9x routerctl (Redis limits' cost)",
                f"{c.throughput_ratio:.2f}x" if c else "n/a",
                c.throughput_ratio >= 0.9 if c else None,
            )
        )
    if soak is not None:
        growth = soak.growth()
        checks.append(
            BudgetCheck(
                soak.target,
                f"soak c={32} {soak.duration_s} s: RSS growth after the warm-up <= 5 %",
                "n/a" if growth is None else f"{growth:+.1%}",
                None if growth is None or soak.problem else growth <= 0.05,
            )
        )
    return checks


def _throughput(
    target: str,
    mode: str,
    found: dict[tuple[str, int, str, str], Comparison],
    baseline: str = "noop",
) -> BudgetCheck:
    c = found.get((mode, 64, target, baseline))
    workers = " (both with 2 workers)" if baseline == "noop-2w" else ""
    return BudgetCheck(
        target,
        f"{mode} c=64 throughput >= 1.00x the do-nothing proxy{workers}",
        f"{c.throughput_ratio:.2f}x" if c else "n/a",
        c.throughput_ratio >= 1.0 if c else None,
    )


def _latency(target: str, cells: dict[tuple[str, int], dict[str, Result]]) -> list[BudgetCheck]:
    cell = cells.get(("chat", 1), {})
    router, noop = cell.get(target), cell.get("noop")
    p50_rule = "chat c=1 p50 <= do-nothing proxy + 0.3 ms"
    p99_rule = "chat c=1 p99 <= 1.5x the do-nothing proxy's"
    if router is None or noop is None or not (router.ok and noop.ok and noop.p99_ms):
        return [
            BudgetCheck(target, p50_rule, "n/a", None),
            BudgetCheck(target, p99_rule, "n/a", None),
        ]
    added = router.p50_ms - noop.p50_ms
    ratio = router.p99_ms / noop.p99_ms
    return [
        BudgetCheck(target, p50_rule, f"{added:+.2f} ms", added <= 0.3),
        BudgetCheck(target, p99_rule, f"{ratio:.2f}x ({router.p99_ms:.2f} ms)", ratio <= 1.5),
    ]


def _ttfb(target: str, probes: dict[str, Probe]) -> BudgetCheck:
    router, noop = probes.get(target), probes.get("noop")
    rule = "stream c=1 time to first byte p50 <= do-nothing proxy + 0.3 ms"
    if router is None or noop is None or not (router.ok and noop.ok):
        return BudgetCheck(target, rule, "n/a", None)
    added = router.p50_ms - noop.p50_ms
    return BudgetCheck(target, rule, f"{added:+.2f} ms", added <= 0.3)


def calibration(results: list[Result]) -> dict[str, float] | None:
    """How this machine compares with DESIGN.md's: the do-nothing proxy against nginx."""
    cells = _cells(results)
    low, high = cells.get(("chat", 1), {}), cells.get(("chat", 64), {})
    direct, noop, noop_64 = low.get("direct"), low.get("noop"), high.get("noop")
    if not (direct and noop and noop_64 and direct.ok and noop.ok and noop_64.ok):
        return None
    return {"noop_added_p50_ms_c1": noop.p50_ms - direct.p50_ms, "noop_rps_c64": noop_64.rps}


def _calibration_text(results: list[Result]) -> list[str]:
    found = calibration(results)
    if found is None:
        return []
    return [
        f"  [info] here the do-nothing proxy adds {found['noop_added_p50_ms_c1']:+.2f} ms p50"
        f" (chat c=1) and serves {found['noop_rps_c64']:,.0f} req/s (chat c=64);",
        "         DESIGN.md's reference machine: ~0.6 ms and ~1.9k req/s. Ratios carry over",
        "         between machines; the absolute ms lines scale with the machine's speed.",
    ]


def render(results: list[Result], comparisons: list[Comparison], checks: list[BudgetCheck]) -> str:
    w = max(len(label) for label in _LABELS.values())
    lines = [
        f"{'case':<12} {'target':<{w}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  status",
        "-" * (49 + w),
    ]
    for (mode, concurrency), cell in _cells(results).items():
        for target in TARGETS:
            r = cell.get(target)
            if r is None:
                continue
            status = "ok" if r.ok else f"FAILED: {r.problem}"
            numbers = (
                f"{r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
                if r.requests
                else f"{'-':>9} {'-':>8} {'-':>8}"
            )
            lines.append(
                f"{f'{mode} c={concurrency}':<12} {_LABELS[target]:<{w}} {numbers}  {status}"
            )
        lines.append("")
    lines += [
        "Each router row against each baseline (throughput ratio; latency added in ms);",
        "routerctl+redis vs routerctl is what Redis limits cost; routerctl+kafka (outbox to",
        "Kafka) and routerctl (outbox to the file) vs routerctl+none is what their sink costs:",
        f"{'case':<12} {'target':<{w}} {'vs':<{w}} {'req/s ratio':>11} "
        f"{'+p50 ms':>8} {'+p99 ms':>8}",
        "-" * (43 + 2 * w),
    ]
    lines += [
        f"{f'{c.mode} c={c.concurrency}':<12} {_LABELS[c.subject]:<{w}} {_LABELS[c.baseline]:<{w}} "
        f"{c.throughput_ratio:>10.2f}x {c.added_p50_ms:>+8.2f} {c.added_p99_ms:>+8.2f}"
        for c in sorted(comparisons, key=_comparison_order)
    ]
    if not comparisons:
        lines.append("(none: no router row and baseline both ran cleanly)")
    lines += ["", "Budget (DESIGN.md, Performance budget; the hot-path issue's goals):"]
    for check in checks:
        verdict = {True: "pass", False: "MISS", None: "n/a "}[check.passed]
        row = _LABELS.get(check.target, check.target)
        lines.append(f"  [{verdict}] {row}: {check.rule}: {check.measured}")
    lines += _calibration_text(results)
    return "\n".join(lines)


def _comparison_order(c: Comparison) -> tuple[str, int, int]:
    return c.mode, c.concurrency, PAIRS.index((c.subject, c.baseline))


def markdown_table(results: list[Result], comparisons: list[Comparison]) -> str:
    """The same numbers as a Markdown table, for docs/benchmarks.md."""
    found = {(c.mode, c.concurrency, c.subject, c.baseline): c for c in comparisons}
    baselines = (
        "direct",
        "noop",
        "routerctl",
        "routerctl+none",
        "noop-2w",
        "routerctl+full",
        "routerctl+full-hypercorn",
    )
    lines = [
        "| case | target | req/s | p50 ms | p99 ms | vs direct | vs do-nothing proxy "
        "| vs routerctl | vs routerctl+none | vs do-nothing proxy, 2 workers "
        "| vs routerctl+full | vs routerctl+full on hypercorn |",
        "|---|---|---:|---:|---:|---|---|---|---|---|---|---|",
    ]
    for (mode, concurrency), cell in _cells(results).items():
        for target in TARGETS:
            r = cell.get(target)
            if r is None:
                continue
            vs = [""] * len(baselines)
            for i, name in enumerate(baselines):
                if (target, name) in PAIRS:
                    c = found.get((mode, concurrency, target, name))
                    vs[i] = _ratio_text(c) if c else "n/a"
            numbers = f"{r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f}" if r.ok else "failed | | "
            cells = " | ".join([f"{mode} c={concurrency}", _LABELS[target], numbers, *vs])
            lines.append(f"| {cells} |")
    return "\n".join(lines)


def _ratio_text(c: Comparison) -> str:
    return f"{c.throughput_ratio:.2f}x, {c.added_p50_ms:+.2f} / {c.added_p99_ms:+.2f} ms"


def as_json(
    results: list[Result], comparisons: list[Comparison], checks: list[BudgetCheck]
) -> dict[str, object]:
    return {
        "results": [r.as_dict() for r in results],
        "comparisons": [asdict(c) for c in comparisons],
        "budget": [asdict(c) for c in checks],
        "calibration": calibration(results),
    }
