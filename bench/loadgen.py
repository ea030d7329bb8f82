"""Drive one case: a curl sanity check, a wrk warm-up, then the measured wrk run.

wrk counts a response with status >= 400 as an error but still as a request, so the
throughput here counts only the good ones and any error of any kind marks the case failed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

WRK = "wrk"
LUA_SCRIPT = Path(__file__).resolve().parent / "post.lua"
_MARKER = '{"bench":'
SLACK_S = 30  # how much longer than its duration a wrk run may take before it is killed


@dataclass(frozen=True, slots=True)
class Case:
    target: str  # one of report.TARGETS
    mode: str  # chat | stream
    concurrency: int
    url: str
    body: str
    key: str
    require_header: str = ""  # the curl check fails when the answer lacks this header
    # host:port of each router to spread the connections over (wrk threads take them in
    # turn, post.lua's setup); empty: every connection to `url`'s host
    spread: tuple[str, ...] = ()

    @property
    def threads(self) -> int:
        if self.spread:  # two threads per router when there are connections for them
            return len(self.spread) * (2 if self.concurrency >= 2 * len(self.spread) else 1)
        return 1 if self.concurrency == 1 else 2


@dataclass(slots=True)
class Result:
    target: str
    mode: str
    concurrency: int
    requests: int = 0
    ok_requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    problem: str = ""  # empty when the case ran cleanly

    @property
    def ok(self) -> bool:
        return not self.problem

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def check_once(case: Case) -> str:
    """One curl request: '' when it is a 200 (with [DONE] for a stream), else what is wrong.

    A 429 is a failure like any other status; `case.require_header` (if set) must be present.
    """
    header = case.require_header or "x-none"
    argv = [
        "curl", "-sS", "--max-time", "10", "-X", "POST",
        "-H", "Content-Type: application/json", "--data-binary", "@-",
        "-w", f"\n%header{{{header}}}\n%{{http_code}}", case.url,
    ]  # fmt: skip
    if case.key:
        argv[2:2] = ["-H", f"Authorization: Bearer {case.key}"]
    try:
        done = subprocess.run(
            argv, input=case.body, capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return "curl check timed out"
    rest, _, status = done.stdout.rpartition("\n")
    body, _, header_value = rest.rpartition("\n")
    if done.returncode != 0 or status != "200":
        detail = (done.stderr.strip() or body.strip())[:300]
        return f"curl check: HTTP {status or '-'} (exit {done.returncode}) {detail}"
    if case.require_header and not header_value.strip():
        return f"curl check: answer without a {case.require_header} header"
    if case.mode == "stream" and "data: [DONE]" not in body:
        return f"curl check: stream without 'data: [DONE]': {body[-300:]!r}"
    if case.mode == "chat" and '"usage"' not in body:
        return f"curl check: answer without usage: {body[:300]!r}"
    return ""


def wrk_argv(case: Case, duration_s: int) -> tuple[list[str], dict[str, str]]:
    """The wrk command line and environment for `case`, running `duration_s` seconds."""
    argv = [
        WRK, f"-t{case.threads}", f"-c{case.concurrency}", f"-d{duration_s}s",
        "--timeout", "10s", "-s", str(LUA_SCRIPT), case.url,
    ]  # fmt: skip
    env = {**os.environ, "BENCH_BODY": case.body, "BENCH_KEY": case.key}
    return argv, {**env, "BENCH_ADDRS": ",".join(case.spread)}


def parse_summary(stdout: str, returncode: int, stderr: str) -> dict[str, object]:
    """The summary line post.lua prints, parsed."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARKER):
            parsed: dict[str, object] = json.loads(line)
            return parsed
    raise RuntimeError(f"wrk exited {returncode} without a summary: {stderr.strip()}")


def run_wrk(case: Case, duration_s: int) -> dict[str, object]:
    """One wrk run; returns the summary line post.lua prints, parsed."""
    argv, env = wrk_argv(case, duration_s)
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=duration_s + SLACK_S, check=False
    )
    return parse_summary(done.stdout, done.returncode, done.stderr)


def measure(case: Case, duration_s: int, warmup_s: int) -> Result:
    result = Result(case.target, case.mode, case.concurrency)
    result.problem = check_once(case)
    if result.problem:
        return result
    try:
        if warmup_s > 0:
            run_wrk(case, warmup_s)
        fill(result, run_wrk(case, duration_s))
    except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as exc:
        result.problem = f"wrk: {exc!r}"
    return result


def fill(result: Result, summary: dict[str, object]) -> None:
    """Set `result`'s figures from a wrk summary; any error marks it failed."""
    errors = {k: int(_number(v)) for k, v in _mapping(summary["errors"]).items()}
    latency = {k: _number(v) for k, v in _mapping(summary["latency_us"]).items()}
    requests = int(_number(summary["requests"]))
    result.requests = requests
    result.ok_requests = max(0, requests - errors["status"])
    result.duration_s = _number(summary["duration_us"]) / 1e6
    result.rps = result.ok_requests / result.duration_s if result.duration_s else 0.0
    result.p50_ms = latency["p50"] / 1000
    result.p90_ms = latency["p90"] / 1000
    result.p99_ms = latency["p99"] / 1000
    result.max_ms = latency["max"] / 1000
    result.errors = errors
    failed = {k: v for k, v in errors.items() if v}
    if failed:
        result.problem = "wrk errors: " + ", ".join(f"{k}={v}" for k, v in failed.items())
    elif requests == 0:
        result.problem = "no requests completed"


def combine(rounds: list[Result]) -> Result:
    """One case measured over several rounds: the median of each figure, every error kept."""
    if len(rounds) == 1:
        return rounds[0]
    first = rounds[0]
    ran = [r for r in rounds if r.requests] or rounds
    errors: dict[str, int] = {}
    for r in rounds:
        for name, count in r.errors.items():
            errors[name] = errors.get(name, 0) + count
    return Result(
        first.target,
        first.mode,
        first.concurrency,
        requests=sum(r.requests for r in rounds),
        ok_requests=sum(r.ok_requests for r in rounds),
        duration_s=sum(r.duration_s for r in rounds),
        rps=statistics.median(r.rps for r in ran),
        p50_ms=statistics.median(r.p50_ms for r in ran),
        p90_ms=statistics.median(r.p90_ms for r in ran),
        p99_ms=statistics.median(r.p99_ms for r in ran),
        max_ms=max(r.max_ms for r in ran),
        errors=errors,
        problem="; ".join(sorted({r.problem for r in rounds if r.problem})),
    )


def _mapping(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return value


def _number(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)
