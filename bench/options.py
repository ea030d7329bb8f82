"""bench/run.py's command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import report


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=int, default=5, help="seconds per case (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds per case")
    parser.add_argument("--quick", action="store_true", help="1 s per case, for CI smoke runs")
    parser.add_argument(
        "--concurrency", default="1,64", help="comma-separated connection counts (default 1,64)"
    )
    parser.add_argument(
        "--targets",
        help=f"subset of {','.join(report.TARGETS)} (default: all; none with --replicas)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        metavar="N",
        help="N routerctl+full side by side on one valkey and one Tansu: per-request costs",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat all cases N times; report medians"
    )
    parser.add_argument(
        "--soak",
        type=int,
        default=0,
        metavar="SECONDS",
        help="also run a memory soak (c=32) this long on routerctl+full, RSS every 10 s",
    )
    parser.add_argument(
        "--ttfb-requests",
        type=int,
        default=500,
        help="streamed requests per target for the time-to-first-byte probe (default 500)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--check-budget", action="store_true", help="exit 1 when a budget line is missed"
    )
    return _checked(parser, parser.parse_args(argv))


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """`args` with --quick applied and the lists parsed; exits with usage on a bad value."""
    if args.quick:
        args.duration = 1
        args.ttfb_requests = min(args.ttfb_requests, 50)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    default = "" if args.replicas else ",".join(report.TARGETS)
    named = [t for t in (default if args.targets is None else args.targets).split(",") if t]
    unknown = [t for t in named if t not in report.TARGETS]
    if unknown:
        parser.error(f"--targets: unknown {','.join(unknown)} (known: {','.join(report.TARGETS)})")
    args.targets = [t for t in report.TARGETS if t in named]
    if (
        min(args.duration, args.rounds, *args.concurrency) < 1
        or min(args.warmup, args.replicas) < 0
    ):
        parser.error(
            "--duration, --rounds and --concurrency must be >= 1, --warmup and --replicas >= 0"
        )
    return args
