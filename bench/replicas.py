"""`--replicas N`: N routerctl+full routers side by side and what one request costs them.

The N routers (each its own process, port, admin port and state dir) share one valkey
(standalone) and one Tansu, as replicas behind a load balancer share Redis and Kafka. One wrk
spreads its connections over their ports (two threads per router, each thread on one
router: post.lua's setup, no proxy). Each (mode, concurrency) case runs on 1 router, then on
all N; around each measured run bench/counters.py reads the routers' CPU, valkey's command
and round-trip counters and the broker's bytes, and the deltas are divided by the good
responses wrk counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import bodies
import counters
import kafka
import limits
import loadgen
import services
from loadgen import Case, Result
from services import Service

TARGET = "routerctl+full"
KAFKA_SOURCE = "Tansu side: TCP bytes on its listener (ss -ti), framing included"


@dataclass(slots=True)
class Cost:
    replicas: int  # routers that took the load
    running: int  # routers running (the idle ones' background work counts too)
    result: Result
    threads: int
    figures: dict[str, object] = field(default_factory=dict)  # counters.per_request's

    def as_dict(self) -> dict[str, object]:
        return {
            "replicas": self.replicas,
            "routers_running": self.running,
            "wrk_threads": self.threads,
            "result": self.result.as_dict(),
            "per_request": self.figures,
            "router_cores_busy": self.cores_busy(),
            "kafka_bytes_source": KAFKA_SOURCE,
        }

    def cores_busy(self) -> float:
        cpu = self.figures.get("router_cpu_s")
        seconds = self.result.duration_s
        return float(cpu) / seconds if isinstance(cpu, float) and seconds else 0.0


@dataclass(slots=True)
class Fleet:
    routers: list[Service]
    key: str
    watched: counters.Watched


def start(stack: ExitStack, tmp: Path, nginx: Service, args: argparse.Namespace) -> Fleet:
    """`args.replicas` routerctl+full routers on one valkey and one Tansu, one API key."""
    valkey, redis_url = limits.start_valkey(stack, tmp, args.valkey, "replicas")
    tansu, bootstrap = kafka.start_tansu(stack, tmp, args.tansu, "replicas")
    routers: list[Service] = []
    key = ""
    for i in range(args.replicas):
        router, key = services.start_routerctl(
            stack, tmp, nginx, name=f"replica-{i + 1}", redis_url=redis_url, sink="kafka",
            kafka_bootstrap=bootstrap, full=True, key=key or None,
        )  # fmt: skip
        routers.append(router)
    watched = counters.Watched(
        [r.process.pid for r in routers],
        valkey.process.pid, _port(valkey.base_url), tansu.process.pid, _port(tansu.base_url),
    )  # fmt: skip
    return Fleet(routers, key, watched)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def cases(fleet: Fleet, concurrency: int) -> list[Case]:
    """chat and stream at `concurrency`, on 1 router and then on all of them."""
    spreads = [fleet.routers[:1]]
    if len(fleet.routers) > 1:
        spreads.append(fleet.routers)
    return [
        Case(
            TARGET,
            mode,
            concurrency,
            routers[0].base_url + "/v1/chat/completions",
            bodies.request_body(stream=mode == "stream"),
            fleet.key,
            "x-ratelimit-limit-requests",
            tuple(r.base_url.removeprefix("http://") for r in routers),
        )
        for routers in spreads
        for mode in ("chat", "stream")
    ]


def measure(fleet: Fleet, case: Case, duration_s: int, warmup_s: int) -> Cost:
    """The case, with the counters read around its measured run."""
    result = Result(case.target, case.mode, case.concurrency)
    for address in case.spread:  # every router answers before the run
        result.problem = result.problem or loadgen.check_once(_on(case, address))
    cost = Cost(len(case.spread), len(fleet.routers), result, case.threads)
    if result.problem:
        return cost
    try:
        if warmup_s > 0:
            loadgen.run_wrk(case, warmup_s)
        time.sleep(0.3)  # the warm-up's settlements and publishes land before `before`
        before = counters.snapshot(fleet.watched)
        loadgen.fill(result, loadgen.run_wrk(case, duration_s))
        after = counters.snapshot(fleet.watched)
    except (RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:
        result.problem = f"wrk or counters: {exc!r}"
        return cost
    cost.figures = counters.per_request(before, after, result.ok_requests)
    evalsha = cost.figures["redis_calls"]
    # An EVALSHA admits at most the requests in flight (one org's, queued in one loop turn).
    if isinstance(evalsha, dict) and evalsha.get("evalsha", 0) * case.concurrency < 1:
        result.problem = (
            f"under one EVALSHA per {case.concurrency} requests ({evalsha}): limits not all in"
            " Redis"
        )
    return cost


def _on(case: Case, address: str) -> Case:
    path = case.url.split("/", 3)[3]
    return Case(case.target, case.mode, case.concurrency, f"http://{address}/{path}",
                case.body, case.key, case.require_header)  # fmt: skip


def run(stack: ExitStack, tmp: Path, nginx: Service, args: argparse.Namespace) -> list[Cost]:
    """Start the fleet, measure every case; the routers stay up until `stack` closes."""
    fleet = start(stack, tmp, nginx, args)
    todo = cases(fleet, max(args.concurrency))
    costs = []
    for i, case in enumerate(todo):
        label = f"[replicas {i + 1}/{len(todo)}] {case.mode} c={case.concurrency}"
        label += f" on {len(case.spread)} of {len(fleet.routers)}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        cost = measure(fleet, case, args.duration, args.warmup)
        r = cost.result
        print(f"{label}: {r.rps:,.0f} req/s" if r.ok else f"{label}: FAILED: {r.problem}",
              file=sys.stderr, flush=True)  # fmt: skip
        costs.append(cost)
    return costs


# (heading, width, figure from a Cost): the per-request table's columns after the case
_COLUMNS: tuple[tuple[str, int, Callable[[Cost], float | None]], ...] = (
    ("req/s", 7, lambda c: c.result.rps),
    ("p50 ms", 7, lambda c: c.result.p50_ms),
    ("p99 ms", 7, lambda c: c.result.p99_ms),
    ("router us", 9, lambda c: _figure(c, "router_cpu_us")),
    ("cores", 5, lambda c: c.cores_busy()),
    ("valkey us", 9, lambda c: _figure(c, "redis_cpu_us")),
    ("cmds", 6, lambda c: _figure(c, "redis_commands")),
    ("evalsha", 7, lambda c: _calls(c).get("evalsha", 0.0)),
    ("RTs", 5, lambda c: _figure(c, "redis_round_trips")),
    ("tansu us", 8, lambda c: _figure(c, "kafka_cpu_us")),
    ("Kafka B", 7, lambda c: _figure(c, "kafka_bytes_in")),
)


def _figure(cost: Cost, name: str) -> float | None:
    value = cost.figures.get(name)
    return float(value) if isinstance(value, int | float) else None


def _calls(cost: Cost) -> dict[str, float]:
    calls = cost.figures.get("redis_calls")
    return calls if isinstance(calls, dict) else {}


def _cell(value: float | None, width: int) -> str:
    if value is None:
        return f"{'n/a':>{width}}"
    return f"{value:>{width},.0f}" if abs(value) >= 100 else f"{value:>{width}.2f}"


def render(costs: list[Cost]) -> str:
    """The per-request table."""
    head = f"{'routers':>7} {'case':<12} " + " ".join(f"{h:>{w}}" for h, w, _ in _COLUMNS)
    lines = [
        f"Replicas ({TARGET}; one valkey, one Tansu), per good response: CPU us of the",
        "routers, valkey and Tansu (/proc utime+stime), Redis commands (scripts' own calls",
        "included), EVALSHAs and round trips (INFO), Kafka bytes (" + KAFKA_SOURCE + "):",
        head,
        "-" * len(head),
    ]
    for cost in costs:
        r = cost.result
        case = f"{r.mode} c={r.concurrency}"
        if not r.ok or not cost.figures:
            lines.append(f"{cost.replicas:>7} {case:<12} FAILED: {r.problem}")
            continue
        cells = " ".join(_cell(get(cost), w) for _, w, get in _COLUMNS)
        lines.append(f"{cost.replicas:>7} {case:<12} {cells}")
    last = next((c for c in reversed(costs) if c.figures), None)
    if last is not None:
        listed = ", ".join(f"{name} {n:.2f}" for name, n in _calls(last).items())
        lines.append(f"  Redis commands per request, last case: {listed}")
    return "\n".join(lines)


def as_json(costs: list[Cost]) -> list[dict[str, object]]:
    return [c.as_dict() for c in costs]
