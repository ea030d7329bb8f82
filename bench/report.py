"""Turn results into the table, the routerctl ratios and the DESIGN.md budget check."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from loadgen import Result

TARGETS = (
    "direct",
    "noop",
    "routerctl+none",
    "routerctl",
    "routerctl+kafka",
    "routerctl+redis",
)
# The rows under test; they get the API key. routerctl publishes usage to the default file
# sink, routerctl+none to sink "none", routerctl+kafka to Kafka (Tansu); all use the outbox.
ROUTERS = ("routerctl+none", "routerctl", "routerctl+kafka", "routerctl+redis")
_LABELS = {
    "direct": "direct (nginx)",
    "noop": "do-nothing proxy",
    "routerctl+none": "routerctl+none",
    "routerctl": "routerctl",
    "routerctl+kafka": "routerctl+kafka",
    "routerctl+redis": "routerctl+redis",
}
# (subject, baseline) compared in each cell. routerctl+redis vs routerctl is what Redis limits
# cost; routerctl+kafka and routerctl vs routerctl+none are what publishing the outbox's
# records to Kafka and to the file cost, against discarding them (sink "none").
PAIRS = (
    ("routerctl", "direct"),
    ("routerctl", "noop"),
    ("routerctl+redis", "direct"),
    ("routerctl+redis", "noop"),
    ("routerctl+redis", "routerctl"),
    ("routerctl+kafka", "routerctl+none"),
    ("routerctl", "routerctl+none"),
)
_BUDGET_HEADINGS = {
    "routerctl+redis": "routerctl+redis: every feature on (auth, Redis limits, routing)",
    "routerctl": "routerctl: no limits (auth, routing)",
}


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


def budget(results: list[Result], comparisons: list[Comparison]) -> list[BudgetCheck]:
    """The "Performance budget" of DESIGN.md, as far as this run can measure it.

    The lines are evaluated for the Redis-limited row first (the budget is "with every feature
    on"), then for plain routerctl, for whichever of the two this run has.
    """
    ran = {r.target for r in results}
    targets = [t for t in ("routerctl+redis", "routerctl") if t in ran] or ["routerctl"]
    return [check for target in targets for check in _budget_for(target, comparisons)]


def _budget_for(target: str, comparisons: list[Comparison]) -> list[BudgetCheck]:
    found = {(c.mode, c.concurrency, c.baseline): c for c in comparisons if c.subject == target}
    checks: list[BudgetCheck] = []
    for mode in ("chat", "stream"):
        c = found.get((mode, 64, "noop"))
        checks.append(
            BudgetCheck(
                target,
                f"{mode} c=64 throughput >= 60% of the do-nothing proxy",
                f"{c.throughput_ratio:.0%}" if c else "n/a",
                c.throughput_ratio >= 0.60 if c else None,
            )
        )
    rules = (
        ("chat", "p50", 1.0, "chat c=1 p50 added vs direct <= 1 ms"),
        ("chat", "p99", 2.5, "chat c=1 p99 added vs direct <= 2.5 ms"),
        ("stream", "p50", 1.0, "stream c=1 p50 added vs direct <= 1 ms (bounds TTFT added)"),
    )
    for mode, quantile, limit, rule in rules:
        c = found.get((mode, 1, "direct"))
        added = (c.added_p50_ms if quantile == "p50" else c.added_p99_ms) if c else None
        checks.append(
            BudgetCheck(
                target,
                rule,
                f"{added:+.2f} ms" if added is not None else "n/a",
                added <= limit if added is not None else None,
            )
        )
    return checks


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
    lines = [
        f"{'case':<12} {'target':<17} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  status",
        "-" * 66,
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
                f"{f'{mode} c={concurrency}':<12} {_LABELS[target]:<17} {numbers}  {status}"
            )
        lines.append("")
    lines += [
        "Each router row against each baseline (throughput ratio; latency added in ms);",
        "routerctl+redis vs routerctl is what Redis limits cost; routerctl+kafka (outbox to",
        "Kafka) and routerctl (outbox to the file) vs routerctl+none is what their sink costs:",
        f"{'case':<12} {'target':<16} {'vs':<17} {'req/s ratio':>11} {'+p50 ms':>8} {'+p99 ms':>8}",
        "-" * 77,
    ]
    lines += [
        f"{f'{c.mode} c={c.concurrency}':<12} {_LABELS[c.subject]:<16} {_LABELS[c.baseline]:<17} "
        f"{c.throughput_ratio:>10.2f}x {c.added_p50_ms:>+8.2f} {c.added_p99_ms:>+8.2f}"
        for c in sorted(comparisons, key=_comparison_order)
    ]
    if not comparisons:
        lines.append("(none: no router row and baseline both ran cleanly)")
    lines += ["", "Budget (DESIGN.md, Performance budget):"]
    for i, check in enumerate(checks):
        if i == 0 or checks[i - 1].target != check.target:
            lines.append(f"  {_BUDGET_HEADINGS[check.target]}:")
        verdict = {True: "pass", False: "MISS", None: "n/a "}[check.passed]
        lines.append(f"    [{verdict}] {check.rule}: {check.measured}")
    lines += _calibration_text(results)
    return "\n".join(lines)


def _comparison_order(c: Comparison) -> tuple[str, int, int]:
    return c.mode, c.concurrency, PAIRS.index((c.subject, c.baseline))


def markdown_table(results: list[Result], comparisons: list[Comparison]) -> str:
    """The same numbers as a Markdown table, for docs/benchmarks.md."""
    found = {(c.mode, c.concurrency, c.subject, c.baseline): c for c in comparisons}
    baselines = ("direct", "noop", "routerctl", "routerctl+none")
    lines = [
        "| case | target | req/s | p50 ms | p99 ms | vs direct | vs do-nothing proxy "
        "| vs routerctl | vs routerctl+none |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for (mode, concurrency), cell in _cells(results).items():
        for target in TARGETS:
            r = cell.get(target)
            if r is None:
                continue
            vs = ["", "", "", ""]
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
